"""tyro's multi-line error boxes, cut down to the one line the CLI prints."""

from __future__ import annotations

import re

_SEPARATOR = re.compile(r"^[\s\-─━=]+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def summarise_tyro_error(text: str) -> str:
    """One line from tyro's error box: its title and the first paragraph of its body. The box is drawn with
    rounded corners on some consoles and as plain text with dashed rules on others; both are handled."""
    lines = [_ANSI.sub("", line).strip().strip("│╭╮╰╯┃").strip() for line in text.splitlines()]
    lines = [line.strip("─ ") if line.startswith("─") or line.endswith("─") else line for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return "could not parse the command line"
    title, body = lines[0], lines[1:]
    while body and _SEPARATOR.match(body[0]):
        body.pop(0)
    for i, line in enumerate(body):
        if line and _SEPARATOR.match(line):
            body = body[:i]
            break
    if title.lower().startswith("required"):   # keep just the missing flags, not their help text
        flags = [line.split()[0] for line in body if line.startswith("-")]
        return f"missing required option(s): {', '.join(flags)}"
    paragraph = []
    for line in body:
        if not line and paragraph:
            break
        if line:
            paragraph.append(line)
    message = " ".join(paragraph)
    # "Value error: Error parsing …", "Missing argument: Missing value …": the title adds nothing then
    redundant = message and (title.lower().endswith("error") or
                             message.split()[0].lower() == title.split()[0].lower())
    if not redundant:
        message = f"{title}: {message}" if message else title
    causes = [m.group(2) for line in body if (m := re.match(r"- <class '(\w+)'>: (.*)", line))
              and m.group(1) != "NoneType"]
    if causes:
        message += f" ({causes[-1]})"
    return re.sub(r"\s+", " ", message)
