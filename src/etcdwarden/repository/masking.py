"""Secrets out of messages: the credential values a repository knows (options and environment), in
every form they may be echoed, and credentials recognisable by their shape; and the store's error
reduced to one line. See :mod:`etcdwarden.repository.objectstore` for what is masked and what is not."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, unquote

#: credential-bearing variables of obstore's AWS_*, AZURE_* and GOOGLE_* families (matched case-insensitively)
_SECRET_ENV = re.compile(r"^(AWS|AZURE|GOOGLE)_\w*(SECRET|TOKEN|KEY|PASSWORD|SAS)\w*$", re.IGNORECASE)
_NOT_SECRET_ENV = re.compile(r"_(ID|NAME|TYPE|FILE|PATH|URL|URI|ENDPOINT|HOST)$", re.IGNORECASE)
_ALSO_SECRET_ENV = {"AWS_ACCESS_KEY_ID"}
#: fields of a JSON service-account key (or authorized-user file) that are secret
_JSON_SECRET_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token")
#: credentials recognisable by their shape, whoever issued them (tokens fetched at run time included)
_PATTERNS = [
    (re.compile(r"(?i)([?&](?:sig|x-amz-signature|x-amz-security-token|x-goog-signature|x-goog-credential)=)"
                r"[^&\s\"'<>]+"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1***"),
    (re.compile(r"(?i)\b(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]{8,}"), r"\1***"),
    (re.compile(r"(?i)\b(Signature=)[0-9a-f]{16,}"), r"\1***"),
]
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
_OS_MESSAGE = re.compile(r'message: "([^"\n]{1,200})"')
_XML_CODE = re.compile(r"<Code>\s*([^<]{1,100}?)\s*</Code>")
_XML_MESSAGE = re.compile(r"<Message>\s*([^<\n]{1,300})")


def env_secrets(environ: Iterable[tuple[str, str]] | None = None) -> list[str]:
    """The values of the credential-bearing variables in the environment (see the module docstring)."""
    items = os.environ.items() if environ is None else environ
    out = []
    for name, value in items:
        upper = name.upper()
        secret = upper in _ALSO_SECRET_ENV or (_SECRET_ENV.match(upper) and not _NOT_SECRET_ENV.search(upper))
        # "1", "no": flags, not secrets; masking such short values would garble every message
        if secret and len(value.strip()) >= 3:
            out.append(value)
    return out


def secret_variants(secrets: Iterable[str]) -> list[str]:
    """Every form in which a secret may show up in a message, longest first (so none is half-masked)."""
    out: set[str] = set()
    for s in secrets:
        if not s:
            continue
        forms = {s, s.strip()}
        if "sig=" in s:  # a SAS token: its signature is what matters, in whatever order the URL puts it
            forms.update(v for k, v in parse_qsl(s.lstrip("?"), keep_blank_values=False) if k == "sig")
        if s.lstrip().startswith("{"):  # a JSON key: its private parts, wherever they are echoed
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(s)
                for key in _JSON_SECRET_FIELDS:
                    value = doc.get(key)
                    if isinstance(value, str) and value:
                        forms.add(value)
                        forms.update(ln.strip() for ln in value.splitlines()
                                     if len(ln.strip()) >= 16 and "-----" not in ln)
        for f in list(forms):
            forms.update({quote(f, safe=""), quote_plus(f), form_encode(f), unquote(f), json.dumps(f)[1:-1]})
        out.update(f for f in forms if f)
    return sorted(out, key=len, reverse=True)


def form_encode(text: str) -> str:
    """``application/x-www-form-urlencoded`` as Rust's encoder writes it (``~`` encoded, unlike Python's)."""
    return "".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "*-._") else
                   "+" if b == 0x20 else f"%{b:02X}" for b in text.encode())


def mask(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def first_line(e: BaseException, secrets: list[str]) -> str:
    """The store's message in one line (masked before it is cut, so no secret is left half visible)."""
    text, _, debug = mask(str(e), secrets).partition("\n\nDebug source:")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    detail = ""
    if "<?xml" in line:  # an XML error body starts on this line: name its code and message instead
        line = line[:line.index("<?xml")].rstrip(": ")
        code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
        if code is not None:
            detail += f": {code.group(1)}"
        if message is not None:
            detail += f" ({message.group(1).strip()})"
    elif "HTTP error" in line:  # no response: say why (connect, timeout, ...) from obstore's debug text
        kind, reasons = _HTTP_KIND.search(debug), _OS_MESSAGE.findall(debug)
        why = [x for x in (kind.group(1).lower() if kind else "", reasons[-1] if reasons else "") if x]
        detail += f" ({': '.join(why)})" if why else " (no response: check the endpoint's address and scheme)"
    return (line if len(line) <= 400 else line[:400] + "...") + detail
