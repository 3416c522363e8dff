"""`kdflow cache ...`: list, verify and clean the teacher cache under KDFLOW_HOME/cache."""
from __future__ import annotations

import datetime as dt
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kdcore.cache import CacheError, gc, list_entries
from kdcore.errors import KdflowError

cache_app = typer.Typer(help="Inspect and clean the teacher cache (KDFLOW_HOME/cache).", no_args_is_help=True)
console = Console()


def _dir():
    from tasks.home import cache_dir, kdflow_home

    return cache_dir(kdflow_home())


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def parse_size(text: str) -> int:
    """'500MB', '2G', '1024' -> bytes."""
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
             "T": 1024**4, "TB": 1024**4}
    t = text.strip().upper()
    num = t.rstrip("KMGTB")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size like 500MB or 2G") from None
    if unit not in units or value < 0:
        raise typer.BadParameter(f"{text!r} is not a size like 500MB or 2G")
    return int(value * units[unit])


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@cache_app.command("ls")
def ls(long: bool = typer.Option(False, "--long", "-l", help="also show the full key, teacher and data hashes")
       ) -> None:
    """List entries: id, split, samples x views, captured tensors, dtype, size, last use."""
    try:
        entries = sorted(list_entries(_dir()), key=lambda e: -e.last_used())
    except KdflowError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    t = Table(box=box.SIMPLE_HEAD, title=f"teacher cache: {_dir()}")
    for col in ("id", "split", "samples", "tensors", "dtype", "size", "last used"):
        t.add_column(col, no_wrap=col != "tensors", min_width=14 if col == "tensors" else None)
    for e in entries:
        m = e.manifest
        views = m["views"]
        shown = f"{m['count']}×{views['num_views']}" + (f" {views['policy']}" if views["policy"] != "none" else "")
        tensors = ", ".join(["logits" + (f" top-{m['topk']}" if m.get("topk") else ""), *m["paths"]])
        t.add_row(e.id[:12], m["split"], shown, tensors, m["dtype"], _size(e.size_bytes()), _when(e.last_used()))
    console.print(t)
    if long:
        for e in entries:
            m = e.manifest
            console.print(f"{e.id[:12]}  key      {m['key']}\n              teacher  {m['teacher_sha256']}\n"
                          f"              data     {m['data_fingerprint']}\n"
                          f"              created  {_when(m['created'])} by kdflow {m['kdflow_version']}")
    console.print(f"{len(entries)} entries, {_size(sum(e.size_bytes() for e in entries))}")


@cache_app.command("verify")
def verify(entry_id: Optional[str] = typer.Argument(None, help="an entry id (prefix); default: all")) -> None:
    """Check entries' files against their manifests (sizes and sha256); exit 1 if any is damaged."""
    entries = [e for e in list_entries(_dir()) if entry_id is None or e.id.startswith(entry_id)]
    if entry_id is not None and not entries:
        console.print(f"[red]error:[/] no cache entry with id {entry_id!r} in {_dir()}")
        raise typer.Exit(2)
    bad = 0
    for e in entries:
        try:
            e.verify(checksums=True)
            console.print(f"ok       {e.id}  ({e.manifest['split']}, {_size(e.size_bytes())})")
        except CacheError as exc:
            bad += 1
            console.print(f"[red]DAMAGED[/]  {e.id}: {exc}")
    for d in sorted(_dir().glob("*")) if _dir().exists() else []:
        if d.is_dir() and not d.name.startswith(".") and not (d / "manifest.json").is_file():
            bad += 1
            console.print(f"[red]DAMAGED[/]  {d.name}: no manifest.json")
    console.print(f"{len(entries)} checked, {bad} damaged")
    if bad:
        raise typer.Exit(1)


@cache_app.command("gc")
def collect(
    keep_days: Optional[float] = typer.Option(None, "--keep-days", help="remove entries unused for this many days"),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="then remove least recently used entries "
                                           "until the cache fits, e.g. 2G"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed"),
) -> None:
    """Remove unused entries (by age and/or total size) and leftovers of interrupted builds."""
    if keep_days is None and max_size is None:
        console.print("[red]error:[/] give --keep-days N and/or --max-size SIZE")
        raise typer.Exit(2)
    if keep_days is not None and keep_days < 0:
        console.print("[red]error:[/] --keep-days must be >= 0")
        raise typer.Exit(2)
    removed = gc(_dir(), keep_days=keep_days, max_size=parse_size(max_size) if max_size else None, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        console.print(f"{verb} {e.id} ({e.manifest['split']}, {_size(e.size_bytes())}, last used "
                      f"{_when(e.last_used())})")
    console.print(f"{verb} {len(removed)} entries, {_size(sum(e.size_bytes() for e in removed))}")
