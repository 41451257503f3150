"""The systemd unit that `tutord service install` writes, and writing it.

`render_unit` adapts the shipped unit (`packaging/tutord.service`, which the package carries
as `daemon/service/data/tutord.service`, so an installed wheel has it) to one installation:
`ExecStart` runs this environment's `tutord` with the chosen home, `User=`/`Group=` are the
chosen account, and the home is the working directory, `TUTORD_HOME`, and the one writable
path. A home directly under `/var/lib` keeps `StateDirectory=` (systemd creates it, owned by
the user); elsewhere those lines go and the home must exist. A home or `tutord` under
`/home`, `/root` or `/run/user` gets `ProtectHome=read-only` (`yes` would hide them from the
service); one under `/tmp` or `/var/tmp` is refused (`PrivateTmp=yes` hides them). The
header's first paragraph (the manual install steps) is replaced by one saying how the file
was made; every other line, comments and hardening included, stays as shipped.
`install_unit` writes the result into a unit folder through a temporary file and a rename
(mode 0644), leaves an identical unit as it is and refuses to replace a different one unless
forced. `next_steps` says what to run then.

It does not run `systemctl`, create the user or the home, print anything (the CLI,
`daemon/cli/service_commands.py`, does), or check that systemd accepts the unit (the tests
run `systemd-analyze verify` on it).
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stages.atomic import fsync_dir, write_atomic

SHIPPED_UNIT = Path(__file__).resolve().parent / "data" / "tutord.service"
CHECKOUT = Path(__file__).resolve().parents[2]
"""The checkout tutord runs from, when it does (its README is named in the unit, if there)."""
UNIT_NAME = "tutord.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_HOME = Path("/var/lib/tutord")
DEFAULT_USER = "tutord"
STATE_ROOT = Path("/var/lib")
PROTECTED_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))
SYSTEMCTL = "systemctl daemon-reload && systemctl enable --now tutord"

_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
"""Paths written into the unit unquoted: no spaces, quotes, `%` specifiers or `$`."""
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def this_tutord() -> Path:
    """The `tutord` script of the environment this Python runs in (a venv's bin folder)."""
    return Path(sys.executable).parent / "tutord"


class UnitError(Exception):
    """The unit cannot be made or written as asked (the message says what to change)."""


class UnitExists(UnitError):
    """A different unit is already installed and `force` was not given."""


@dataclass(frozen=True)
class UnitChoice:
    """One installation: its home, account and `tutord` executable."""

    home: Path
    user: str = DEFAULT_USER
    group: str = ""
    executable: Path = field(default_factory=lambda: this_tutord())

    @property
    def group_name(self) -> str:
        return self.group or self.user


@dataclass(frozen=True)
class Installed:
    """Where the unit was written; `changed` False: an identical unit was already there."""

    path: Path
    changed: bool


def shipped_unit(path: Path = SHIPPED_UNIT) -> str:
    """The shipped unit's text."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnitError(
            f"cannot read the shipped unit {path}: {exc.strerror or exc} (it comes with a "
            "checkout of tutord; install tutord from one, e.g. `pip install -e .`)"
        ) from exc


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_choice(choice: UnitChoice) -> None:
    """`UnitError` unless the choice can be written into a unit as it is."""
    for what, path in (("home", choice.home), ("tutord executable", choice.executable)):
        if not path.is_absolute() or not _PLAIN_PATH.fullmatch(str(path)):
            raise UnitError(
                f"{what} {str(path)!r}: the unit needs an absolute path of letters, digits "
                "and . _ - + @ / only (no spaces, quotes, % or $)"
            )
        if _under(path, PRIVATE_TMP):
            raise UnitError(
                f"{what} {path} is under {', '.join(map(str, PRIVATE_TMP))}, which the unit's "
                "PrivateTmp=yes hides from the service: choose another path"
            )
    for what, name in (("user", choice.user), ("group", choice.group_name)):
        if not _ACCOUNT.fullmatch(name):
            raise UnitError(f"{what} {name!r} is not a usable account name")
    if not os.access(choice.executable, os.X_OK) or not choice.executable.is_file():
        raise UnitError(f"tutord executable {choice.executable} is not an executable file")


def _header(lines: list[str], choice: UnitChoice) -> list[str]:
    """The leading comments, their first paragraph (what the unit is and how to install it
    by hand) replaced by how this file was made; the later ones (GPU hosts) kept."""
    made = [
        "# tutord as a systemd service, written by `tutord service install` from",
        f"# packaging/tutord.service for user {choice.user}, home {choice.home},",
        f"# {choice.executable}. Run that command again (--force) rather than editing it.",
    ]
    rest = next((i for i, line in enumerate(lines) if line.strip() == "#"), len(lines))
    return [*made, *lines[rest:]]


def render_unit(template: str, choice: UnitChoice, readme: Path | None = None) -> str:
    """The shipped unit adapted to `choice` (see the module's docstring); `readme`: the
    README its `Documentation=` points to (None: as shipped)."""
    check_choice(choice)
    home = str(choice.home)
    state_dir = choice.home.parent == STATE_ROOT
    protect_home = _under(choice.home, PROTECTED_HOMES) or _under(
        choice.executable, PROTECTED_HOMES
    )
    # key (for Environment=: the variable) -> its value in this installation
    values = {
        "ExecStart": f"{choice.executable} --home {home} run",
        "User": choice.user,
        "Group": choice.group_name,
        "WorkingDirectory": home,
        "ReadWritePaths": home,
        "Environment=TUTORD_HOME": home,
    }
    if state_dir:
        values["StateDirectory"] = choice.home.name
    if protect_home:
        values["ProtectHome"] = "read-only"
    if readme is not None:
        values["Documentation"] = f"file://{readme}"
    lines = template.splitlines()
    first_section = next((i for i, line in enumerate(lines) if line.startswith("[")), 0)
    out = _header(lines[:first_section], choice)
    seen: set[str] = set()
    for line in lines[first_section:]:
        key, _, value = line.partition("=")
        if key == "Environment":
            key = f"Environment={value.partition('=')[0]}"
        if key in ("StateDirectory", "StateDirectoryMode") and not state_dir:
            continue  # systemd would create /var/lib/<name>; the home is elsewhere
        if key in values:
            seen.add(key)
            line = f"{key}={values[key]}"
        out.append(line)
    missing = set(values) - seen - {"Documentation", "ProtectHome"}
    if missing:
        raise UnitError(
            f"the shipped unit {SHIPPED_UNIT} has no {', '.join(sorted(missing))} line: "
            "it is not the unit this tutord knows how to adapt"
        )
    return "\n".join(out) + "\n"


def install_unit(text: str, unit_dir: Path, *, force: bool = False) -> Installed:
    """Write `text` as `unit_dir/tutord.service` (temporary file, rename, mode 0644).

    An identical unit there is left alone (`changed` False); a different one is
    `UnitExists` unless `force`.
    """
    if not unit_dir.is_dir():
        raise UnitError(f"unit folder {unit_dir} does not exist (or is not a folder)")
    target = unit_dir / UNIT_NAME
    try:
        current = target.read_text(encoding="utf-8") if target.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise UnitError(f"cannot read the unit already at {target}: {exc}") from exc
    if current == text:
        return Installed(target, changed=False)
    if current is not None and not force:
        raise UnitExists(
            f"{target} exists and differs from the unit tutord would write; --force replaces it"
        )
    try:
        write_atomic(target, text, mode=0o644)
        fsync_dir(unit_dir)
    except PermissionError as exc:
        raise UnitError(
            f"cannot write {target}: permission denied (run it with sudo, or choose a folder "
            "you can write with --unit-dir)"
        ) from exc
    except OSError as exc:
        raise UnitError(f"cannot write {target}: {exc}") from exc
    return Installed(target, changed=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _initialized(home: Path) -> bool:
    try:
        return (home / "tutord.toml").is_file()
    except OSError:  # unreadable by whoever runs this: say what to run anyway
        return False


def next_steps(choice: UnitChoice, unit_dir: Path) -> list[str]:
    """The commands to run after the unit is written, in order (none is run here)."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    home, user = choice.home, choice.user
    steps: list[str] = []
    if unit_dir.resolve() != DEFAULT_UNIT_DIR:
        steps.append(f"{sudo}install -m 0644 {unit_dir / UNIT_NAME} {DEFAULT_UNIT_DIR}/")
    if not _user_exists(user):
        steps.append(f"{sudo}useradd --system --home-dir {home} --shell /usr/sbin/nologin {user}")
    if home.parent != STATE_ROOT and not home.is_dir():
        steps.append(f"{sudo}install -d -o {user} -g {choice.group_name} -m 0750 {home}")
    if not _initialized(home):
        steps.append(f"sudo -u {user} {choice.executable} --home {home} init")
    daemon_reload, enable = SYSTEMCTL.split(" && ")
    steps.append(f"{sudo}{daemon_reload} && {sudo}{enable}")
    return steps
