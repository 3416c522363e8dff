"""`kdflow cache ...`: list, verify and clean the teacher cache under KDFLOW_HOME/cache, and list and
clean the decoded image stores (data.decoded_store) under KDFLOW_HOME/data/decoded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from flows.console import fail, out, user_errors

app = typer.Typer(
    help="Inspect and clean the teacher cache (KDFLOW_HOME/cache) and the decoded image stores.", no_args_is_help=True
)

_BYTES = TypeAdapter(ByteSize)


def _dir() -> Path:
    from tasks.home import cache_dir, kdflow_home

    with user_errors():
        return cache_dir(kdflow_home())


def _decoded_dir(given: Optional[Path]) -> Path:
    """Where the decoded image stores are: ``--decoded-dir``, else data.decoded_store_dir's default."""
    if given is not None:
        return given.expanduser()
    from kdcore.config import DataConfig
    from kdcore.data.stream import store_root

    _dir()  # KDFLOW_HOME checked as for the teacher cache
    return store_root(DataConfig())


DecodedDir = Annotated[
    Optional[Path],
    typer.Option(
        "--decoded-dir",
        help="where the decoded image stores are, if a config set data.decoded_store_dir "
        "(default: KDFLOW_HOME/data/decoded)",
    ),
]


def _size(n: int) -> str:
    return ByteSize(n).human_readable(decimal=True, separator=" ")


def parse_size(text: str) -> int:
    """'500MB', '2G', '2GB', '2GiB', '1024' -> bytes (pydantic's ByteSize: KB/MB/GB are powers of
    1000, KiB/MiB/GiB powers of 1024)."""
    try:
        return int(_BYTES.validate_python(text.strip()))
    except ValidationError:
        fail(f"--max-size {text!r} is not a size: give bytes with an optional unit, e.g. 1024, 500MB, 2G, 2GiB")


def _print_table(t: Table) -> None:
    """Piped into another program, the table keeps every column whole (rich would fit it to 80
    columns and cut the dates); a terminal gets its own width."""
    if out.is_terminal:
        out.print(t)
    else:  # Console.print's width can only narrow: a console of its own, as wide as the table needs
        Console(file=out.file, width=max(out.width, 160)).print(t)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command("ls", short_help="List the cache entries (size, views, last use) and the decoded image stores.")
def ls(
    long: Annotated[bool, typer.Option("--long", "-l", help="also show the full key, teacher and data hashes")] = False,
    decoded_dir: DecodedDir = None,
) -> None:
    """List entries (id, split, samples x views, captured tensors, dtype, size, last use), then the
    decoded image stores, if any."""
    root = _dir()
    with user_errors():
        from kdcore.cache import list_entries  # torch: loaded by the commands that read entries

        entries = sorted(list_entries(root), key=lambda e: -e.last_used())
    t = Table(box=box.SIMPLE_HEAD, title=f"teacher cache: {root}")
    for col in ("id", "split", "samples", "tensors", "dtype", "size", "last used"):
        t.add_column(col, no_wrap=col != "tensors", min_width=14 if col == "tensors" else None)
    for e in entries:
        m = e.manifest
        views = m["views"]
        shown = f"{m['count']}×{views['num_views']}" + (f" {views['policy']}" if views["policy"] != "none" else "")
        tensors = ", ".join(["logits" + (f" top-{m['topk']}" if m.get("topk") else ""), *m["paths"]])
        t.add_row(e.id[:12], m["split"], shown, tensors, m["dtype"], _size(e.size_bytes()), _when(e.last_used()))
    _print_table(t)
    if long:
        for e in entries:
            m = e.manifest
            out.print(
                f"{e.id[:12]}  key      {m['key']}\n              teacher  {m['teacher_sha256']}\n"
                f"              data     {m['data_fingerprint']}\n"
                f"              created  {_when(m['created'])} by kdflow {m['kdflow_version']}"
            )
    out.print(f"{len(entries)} entries, {_size(sum(e.size_bytes() for e in entries))}")
    _list_decoded(_decoded_dir(decoded_dir))


def _list_decoded(root: Path) -> None:
    from kdcore.data.decoded_store import list_stores

    stores = list(reversed(list_stores(root)))  # the most recently used first, as above
    if not stores:
        return
    t = Table(box=box.SIMPLE_HEAD, title=f"decoded image stores: {root}")
    for col in ("data fingerprint", "images", "size", "last used"):
        t.add_column(col, no_wrap=True)
    for st in stores:
        t.add_row(st.id[:16], _images(st.splits), _size(st.size_bytes), _when(st.last_used))
    _print_table(t)
    out.print(f"{_stores(len(stores))}, {_size(sum(st.size_bytes for st in stores))}")


@app.command("verify")
def verify(
    entry_id: Annotated[Optional[str], typer.Argument(help="an entry id (prefix); default: all")] = None,
) -> None:
    """Check entries' files against their manifests (sizes and sha256); exit 1 if any is damaged."""
    root = _dir()
    with user_errors():
        from kdcore.cache import CacheError, list_entries

        entries = [e for e in list_entries(root) if entry_id is None or e.id.startswith(entry_id)]
    if entry_id is not None and not entries:
        fail(f"no cache entry with id {entry_id!r} in {root}")
    bad = 0
    for e in entries:
        try:
            e.verify(checksums=True)
            out.print(f"ok       {e.id}  ({e.manifest['split']}, {_size(e.size_bytes())})")
        except CacheError as exc:
            bad += 1
            out.print(f"[red]DAMAGED[/]  {e.id}: {exc}")
    for d in sorted(root.glob("*")) if root.exists() else []:
        if d.is_dir() and not d.name.startswith(".") and not (d / "manifest.json").is_file():
            bad += 1
            out.print(f"[red]DAMAGED[/]  {d.name}: no manifest.json")
    out.print(f"{len(entries)} checked, {bad} damaged")
    if bad:
        raise typer.Exit(1)


@app.command("gc", short_help="Remove unused entries, interrupted builds' leftovers and (--decoded) image stores.")
def collect(
    keep_days: Annotated[
        Optional[float], typer.Option("--keep-days", help="remove entries unused for this many days")
    ] = None,
    max_size: Annotated[
        Optional[str],
        typer.Option(
            "--max-size",
            help="then remove least recently used entries until the cache fits, e.g. 500MB, 2G, 2GiB "
            "(KB/MB/GB: powers of 1000; KiB/MiB/GiB: of 1024)",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would be removed")] = False,
    decoded: Annotated[
        bool,
        typer.Option("--decoded", help="clean the decoded image stores instead of the teacher cache"),
    ] = False,
    decoded_dir: DecodedDir = None,
) -> None:
    """Remove unused entries (by age and/or total size) and leftovers of interrupted builds; with
    --decoded, the same for the decoded image stores (a removed store is decoded again when needed)."""
    if keep_days is None and max_size is None:
        fail("give --keep-days N and/or --max-size SIZE")
    if keep_days is not None and not keep_days >= 0:
        fail(f"--keep-days must be >= 0, got {keep_days}")
    limit = parse_size(max_size) if max_size is not None else None
    if decoded:
        _collect_decoded(_decoded_dir(decoded_dir), keep_days, limit, dry_run)
        return
    root = _dir()
    with user_errors():
        from kdcore.cache import gc

        removed = gc(root, keep_days=keep_days, max_size=limit, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        out.print(f"{verb} {e.id} ({e.manifest['split']}, {_size(e.size_bytes())}, last used {_when(e.last_used())})")
    out.print(f"{verb} {len(removed)} entries, {_size(sum(e.size_bytes() for e in removed))}")


def _collect_decoded(root: Path, keep_days: Optional[float], limit: Optional[int], dry_run: bool) -> None:
    from kdcore.data.decoded_store import remove_stores

    with user_errors():
        removed = remove_stores(root, keep_days=keep_days, max_size=limit, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for st in removed:
        about = f"{_images(st.splits)}, {_size(st.size_bytes)}, last used {_when(st.last_used)}"
        out.print(f"{verb} decoded store {st.id} ({about})")
    out.print(f"{verb} {_stores(len(removed))}, {_size(sum(st.size_bytes for st in removed))}")


def _images(splits: dict[str, int]) -> str:
    return ", ".join(f"{split} {n:,}" for split, n in splits.items())


def _stores(n: int) -> str:
    return f"{n} decoded store{'' if n == 1 else 's'}"
