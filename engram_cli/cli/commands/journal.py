"""The journal as a whole: ``engram backup``, ``engram verify``, ``engram restore`` and
``engram gc``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import Output, note
from engram_cli.client.autostart import daemon_answers
from engram_cli.client.errors import Conflict, ExitCode, NotFound, UsageProblem
from engram_cli.formats.text import format_duration, timestamp
from engramd.protocol import BackupInfo, Damaged, resolve_data_dir

BackupArg = Annotated[str, typer.Argument(metavar="BACKUP", help="A backup's directory.")]


def _info_rows(info: BackupInfo) -> list[tuple[str, object]]:
    return [("path", info.path), ("made", timestamp(info.made_at)), ("seq", info.seq),
            ("units", info.units), ("contexts", info.contexts), ("leases", info.leases),
            ("tasks", info.tasks), ("files", info.files), ("bytes", info.bytes),
            ("daemon_version", info.daemon_version)]


def backup(
    ctx: typer.Context,
    dest: Annotated[str, typer.Argument(
        metavar="DEST", help="A directory that does not exist yet (its parent does).")],
    json: JsonOption = False,
) -> None:
    """Copy the journal to DEST while the daemon runs: consistent at one seq (writers wait
    for one commit at most), checked as it is written; DEST is a data dir of its own."""
    cli = context.get(ctx)
    out = cli.output(json)
    made = cli.client(admin=True).make_backup(os.path.abspath(dest))
    if out.json:
        out.json_line(made)
        return
    out.fields("backup", [*_info_rows(made.backup),
                          ("writes paused", f"{made.paused_seconds * 1000:.1f} ms"),
                          ("took", format_duration(made.seconds)
                           if made.seconds >= 1 else f"{made.seconds * 1000:.0f} ms")])


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", help="Say what each policy would archive and remove; change "
                                "nothing.")] = False,
    json: JsonOption = False,
) -> None:
    """Apply the retention policies now ([[retention.policy]] in the daemon's config):
    units past them are archived (JSON lines, gzip, in retention.archive_dir), then
    removed from the journal and the search indexes. Pinned units, tasks not done and
    messages awaiting acknowledgements stay. 'engram unit import ARCHIVE' brings
    archived units back."""
    cli = context.get(ctx)
    out = cli.output(json)
    report = cli.client(admin=True, timeout=None).run_retention(dry_run=dry_run)
    if out.json:
        out.json_line(report)
        return
    if not report.policies:
        out.line("no retention policies: add [[retention.policy]] tables to the daemon's "
                 "config file (engramd --print-config shows it)")
        return
    verb = "would archive and remove" if report.dry_run else "archived and removed"
    for policy in report.policies:
        limits = [f"max_age {_age(policy.max_age)}" if policy.max_age else "",
                  f"max_units {policy.max_units:,}" if policy.max_units is not None else ""]
        out.line(f"policy {policy.context} ({', '.join(each for each in limits if each)})")
        if policy.shadowed_by is not None:
            out.line(f"  covers no context: the earlier policy {policy.shadowed_by} covers "
                     "every context it could (put the narrower policy first)")
        elif not policy.contexts:
            out.line("  nothing past it")
        for each in policy.contexts:
            span = (f", {timestamp(each.oldest)} to {timestamp(each.newest)}"
                    if each.oldest is not None and each.newest is not None else "")
            out.line(f"  {each.context_id}: {verb} {each.units:,} unit(s), "
                     f"{_size(each.bytes)}{span}; {each.kept:,} kept"
                     + (f" ({each.held:,} held: pinned, open tasks, messages awaiting "
                        "acknowledgement)" if each.held else ""))
            if each.archive:
                out.line(f"    archive: {each.archive}")
    out.line(f"{verb} {report.units:,} unit(s), {_size(report.bytes)}"
             + ("" if report.dry_run else f", archives in {report.archive_dir}"))


def _age(seconds: float) -> str:
    """As the config file may write it: ``30d``, ``12h``, ``90m``, ``45s``."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.1f} GiB"


def verify(
    ctx: typer.Context,
    path: Annotated[str | None, typer.Argument(
        metavar="[BACKUP]", help="A backup to check (none: the running daemon's journal).")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Check the journal (or a backup) whole: without BACKUP, walk every key of the
    running daemon's store and compare it with the log (what is damaged, with file and
    key range, and what --rebuild-store can restore); with BACKUP, every file against its
    manifest, every log record, every store block, the counts. Exit 74 naming the damage."""
    cli = context.get(ctx)
    out = cli.output(json)
    if path is None:
        _verify_journal(cli, out)
        return
    if not os.path.isdir(path):
        raise NotFound(f"no backup at {os.path.abspath(path)}")
    checked = cli.client(admin=True).verify_backup(os.path.abspath(path))
    if out.json:
        out.json_line(checked)
    else:
        if checked.backup is not None:
            rows = _info_rows(checked.backup)
            rows[0] = ("path", os.path.abspath(path))  # the copy checked, wherever it moved
            out.fields("backup", rows)
        for problem in checked.problems:
            out.line(f"damaged: {problem}")
        out.line("intact" if checked.ok else "the backup is damaged")
    if not checked.ok:
        raise typer.Exit(ExitCode.DAMAGED)


def _verify_journal(cli: context.CliContext, out: Output) -> None:
    report = cli.client(admin=True, timeout=None).verify()
    if out.json:
        out.json_line(report)
    else:
        out.fields("journal", [
            ("store", f"{report.keys:,} keys, {report.units:,} units (of "
                      f"{report.units_expected:,}), {report.contexts:,} contexts (of "
                      f"{report.contexts_expected:,}), events to seq {report.applied_seq}"),
            ("log", f"seqs {report.log_first_seq} to {report.log_last_seq}, "
                    f"{report.log_units:,} units"),
            ("took", f"{report.seconds:.2f} s")])
        for damage in report.damage:
            out.line(f"damaged: {damage.file}: {damage.reason} (keys after "
                     f"{damage.after_key or 'the start'!r} up to {damage.resumed_at or 'the end'!r}"
                     " not read)")
        for problem in report.problems:
            out.line(f"problem: {problem}")
        if not report.ok:
            out.line("a rebuild from the log restores all of it ('engramd --rebuild-store' "
                     "with the daemon stopped)" if report.rebuild_complete else
                     "a rebuild from the log cannot restore all of it: restore a backup "
                     "('engram restore'), or rebuild what the log holds")
        out.line("intact" if report.ok else "the journal is damaged")
    if not report.ok:
        raise typer.Exit(ExitCode.DAMAGED)


def restore(
    ctx: typer.Context,
    path: BackupArg,
    json: JsonOption = False,
) -> None:
    """Make a backup the journal of this user's daemon (ENGRAM_DATA_DIR): checked first,
    then copied into a data dir that must not exist yet, with no daemon running on it."""
    cli = context.get(ctx)
    out = cli.output(json)
    source = os.path.abspath(path)
    data_dir = resolve_data_dir(None, cli.env)
    if daemon_answers(cli.unconnected_client().socket_path):
        raise Conflict("a daemon is running: stop it first (engram daemon stop)")
    if os.path.lexists(data_dir):
        raise Conflict(f"{data_dir} exists: move it aside first (it is the journal the "
                       "backup would replace)")
    if not os.path.isdir(source):
        raise UsageProblem(f"{source} is not a directory")
    checked = subprocess.run([sys.executable, "-P", "-m", "engramd", "--verify-backup", source],
                             capture_output=True, text=True, check=False,
                             stdin=subprocess.DEVNULL)
    if checked.returncode != 0:
        damage = [line for line in checked.stdout.splitlines() if line.startswith("damaged")]
        why = damage[0] if damage else (checked.stderr.strip().splitlines() or ["?"])[-1]
        raise Damaged(f"{source} does not check out ({why}); nothing was restored")
    partial = f"{data_dir}.restoring"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=shutil.copy2)
    os.chmod(partial, 0o700)  # a data dir is private, whatever DEST's parent allowed
    _sync_tree(partial)
    os.rename(partial, data_dir)
    _sync_dir(os.path.dirname(data_dir))
    if out.json:
        out.json_line({"restored": source, "data_dir": data_dir})
        return
    out.line(f"restored {source} into {data_dir}")
    note("start it with 'engram daemon start' (any command starts it too)")


def _sync_tree(root: str) -> None:
    """Every file and directory of *root* on disk before it takes the journal's name."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(directory)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
