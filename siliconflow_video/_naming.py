"""requestId (untrusted) → a safe file name inside the destination folder.

A requestId comes from the network, and a naming callback comes from user code: neither may
turn into a path that leaves the destination folder, hides the file, or names a device.
``default_name`` builds names from a strict ASCII whitelist; ``target_path`` is the one gate
every name (default or user-supplied) goes through before it touches the disk.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import UnsafeFileNameError

__all__ = ["check_name", "default_name", "safe_stem", "target_path"]

#: Longest stem: leaves room for "_<index><ext>" and for ".part.json" within 255 bytes.
MAX_STEM = 120
#: Longest whole file name in UTF-8 bytes, so "<name>.part.json.tmp" still fits in 255.
MAX_NAME_BYTES = 200

#: What SiliconFlow's ids look like (lowercase, uuid-like). Such ids are used as they are.
#: No capitals: on a case-insensitive file system (macOS, Windows) "Job-1" and "job-1" name
#: one file, so an id with capitals gets the hash of its exact spelling. No "_": every
#: changed stem contains one, so changed and unchanged stems can never coincide.
_ORDINARY_ID = re.compile(rf"[a-z0-9][a-z0-9-]{{0,{MAX_STEM - 1}}}")
#: Characters kept when an id has to be cleaned; everything else becomes "_". Dots go too:
#: they would let "con.x" keep a reserved device name in front of its first dot.
_UNSAFE_STEM_CHARS = re.compile(r"[^A-Za-z0-9-]")
_HASH_DIGITS = 8

# Device names Windows resolves in every folder, whatever the extension ("con.txt").
# COM0/LPT0 and the superscript digits are reserved by newer Windows versions.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{dev}{n}" for dev in ("com", "lpt") for n in "0123456789¹²³"}
)

_VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi"})
_DEFAULT_SUFFIX = ".mp4"

# Characters that are not separators here but become one elsewhere: Windows "best fit"
# code-page conversion maps fullwidth and other slashes to "/" or "\".
_SLASH_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u29f9\u2216\ufe68\uff0f\uff3c")
# Not allowed in Windows file names; ":" would even open an NTFS alternate data stream.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
# Unicode categories that have no business in a file name: controls, format characters
# (e.g. right-to-left override, which disguises the extension), surrogates, unassigned,
# line and paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def safe_stem(request_id: str) -> str:
    """A non-empty, non-hidden, non-reserved file-name stem made only of [A-Za-z0-9._-],
    at most 120 characters. Identity for ordinary (lowercase) ids; otherwise characters are
    replaced by '_' and an 8-hex-digit hash of the original id is appended so that two
    different ids never map to the same stem, not even one that differs only in case."""
    if _ORDINARY_ID.fullmatch(request_id) and not _is_reserved(request_id):
        return request_id
    # "surrogatepass" so that any str hashes, and ids differing only in a lone surrogate
    # still hash differently.
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    cleaned = _UNSAFE_STEM_CHARS.sub("_", request_id)
    prefix = cleaned[: MAX_STEM - _HASH_DIGITS - 1]
    if prefix.startswith("-"):  # would read as an option to every command-line tool
        prefix = "_" + prefix[1:]
    # The "_" before the hash makes every changed stem differ from every ordinary id, and
    # keeps a reserved prefix ("CON") from being the whole stem.
    return f"{prefix}_{digest[:_HASH_DIGITS]}"


def default_name(request_id: str, index: int, url: str) -> str:
    """f"{safe_stem(request_id)}_{index}{ext}" with ext taken from the URL path when it is a
    short alphanumeric video suffix, else '.mp4'."""
    return f"{safe_stem(request_id)}_{index}{_suffix_from_url(url)}"


def check_name(name: str) -> str:
    """``name`` when it is one plain, safe component (as ``target_path`` checks it): the
    same names are allowed for an object under an ``s3://`` prefix as for a file."""
    problem = _name_problem(name)
    if problem is not None:
        raise UnsafeFileNameError(f"unsafe file name {name!r}: {problem}")
    return name


def target_path(dest: Path, name: str) -> Path:
    """dest / name after checking name is one plain, safe component (no separators, not
    '.'/'..', no NUL/control characters, not hidden, not reserved, not too long).
    Raises UnsafeFileNameError (a ValueError and SiliconFlowError) otherwise."""
    problem = _name_problem(name)
    if problem is not None:
        raise UnsafeFileNameError(f"unsafe file name {name!r}: {problem}")
    path = dest / name
    # Belt and braces: whatever the checks above missed, the result must be a direct child.
    if path.parent != dest or path.name != name:
        raise UnsafeFileNameError(
            f"unsafe file name {name!r}: it does not stay a plain name inside {dest}"
        )
    return path


def _suffix_from_url(url: str) -> str:
    try:
        url_path = urlsplit(url).path
    except ValueError:  # e.g. a malformed IPv6 host; the name just gets the default suffix
        return _DEFAULT_SUFFIX
    suffix = posixpath.splitext(posixpath.basename(url_path))[1].lower()
    return suffix if suffix in _VIDEO_SUFFIXES else _DEFAULT_SUFFIX


def _is_reserved(name: str) -> bool:
    # Windows ignores the extension and trailing dots/spaces: "CON .txt" is the console too.
    base = name.split(".", 1)[0].rstrip(" .")
    return base.casefold() in _RESERVED


def _name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as one file name, or None when it is fine."""
    if not isinstance(name, str):
        return f"a file name must be a str, got {type(name).__name__}"
    if not name:
        return "it is empty"
    for ch in name:
        if ch in "/\\":
            return "it contains a path separator ('/' or '\\'); give one plain file name"
        if ch == "\x00":
            return "it contains a NUL character"
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"it contains the control or invisible character U+{ord(ch):04X}"
        if ch in _SLASH_LOOKALIKES:
            return f"it contains U+{ord(ch):04X}, which some systems turn into a separator"
        if ch in _WINDOWS_FORBIDDEN:
            return f"it contains {ch!r}, which Windows does not allow in file names"
    # Compatibility forms (fullwidth "..", "CON") read as the real thing on some systems.
    for form in {name, unicodedata.normalize("NFKC", name)}:
        if form in (".", ".."):
            return "'.' and '..' name folders, not files"
        if "/" in form or "\\" in form:
            return "it contains a character that normalizes to a path separator"
        if form.startswith("."):
            return "it starts with '.', which would hide the file"
        if _is_reserved(form):
            return "it is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1, LPT1, ...)"
    if name[-1] in ". ":
        return "it ends with a dot or a space, which Windows silently drops"
    if name[0].isspace():
        return "it starts with a space"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (
            f"it is {size} bytes long in UTF-8; at most {MAX_NAME_BYTES} leave room for "
            "the '.part.json' files written next to it"
        )
    return None
