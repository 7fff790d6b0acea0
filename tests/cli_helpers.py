"""Run the etcdwarden CLI in-process and capture its output."""

from __future__ import annotations

import io
from dataclasses import dataclass

from etcdwarden.cli.main import run
from etcdwarden.cli.output import Output


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*argv: str) -> Result:
    o = Output(out=io.StringIO(), err=io.StringIO())
    try:
        code = run(list(argv), out=o)
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    assert isinstance(o.out, io.StringIO) and isinstance(o.err, io.StringIO)
    return Result(code, o.out.getvalue(), o.err.getvalue())
