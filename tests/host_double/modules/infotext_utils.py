"""``modules.infotext_utils`` of the double: reading a generation's infotext back, as PNG Info and
"Send to txt2img" do, then letting the ``infotext_pasted`` callbacks edit the result (reference §4.1).

Infotext layout (what ``modules.processing`` of the double writes): the prompt lines, optionally a
line starting ``Negative prompt:`` followed by the negative prompt lines, and a last line of
``Key: value`` fields separated by commas, where a value holding a comma, a colon or a line break is
written as a JSON string.  The last line is read as fields only when it yields at least three of
them (otherwise it belongs to the prompt).  Not modelled: ``Size-1``/``Size-2`` splitting and the
other per-key conversions of the host.
"""
import json

from modules import script_callbacks

NEGATIVE = "Negative prompt:"


def quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _split_fields(line: str) -> list[tuple[str, str]]:
    """``Key: value, Key2: "quoted, value"`` → [(key, value), …]; a piece without ':' is dropped."""
    pieces, current, in_string, escaped = [], [], False, False
    for char in line:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ",":
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    fields = []
    for piece in pieces:
        key, colon, value = piece.partition(":")
        if colon and key.strip():
            fields.append((key.strip(), unquote(value.strip())))
    return fields


def parse_generation_parameters(x: str, skip_fields=None) -> dict:
    lines = x.strip().split("\n")
    fields = _split_fields(lines[-1]) if len(lines) > 1 else []
    if len(fields) >= 3:
        lines = lines[:-1]
    else:
        fields = []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    params = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    params.update(fields)
    for key in skip_fields or ():
        params.pop(key, None)
    script_callbacks.infotext_pasted_callback(x, params)
    return params
