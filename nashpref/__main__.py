"""`python -m nashpref …` is the `nashpref` command (torchrun runs it as `torchrun … -m nashpref train …`)."""

from nashpref.cli import main

if __name__ == "__main__":
    main()
