"""Send one HL7 message over MLLP and print the reply: `python -m telemetry.hl7.send`.

The message comes from a file or standard input; line ends (LF, CRLF) become the CR that HL7
separates segments with, so a message typed in an editor or with printf works. Needs no Django
and no database: it is a plain MLLP client (telemetry.hl7.mllp.mllp_send). The exit status is 0
for AA, 1 for AE, 2 for AR, 3 for anything else (no reply, not an ACK).

    printf 'MSH|^~\\&|ADT1|HOSP|PERFUSE|PERFUSE|20261201120000||ADT^A01^ADT_A01|MSG1|P|2.5\\n'\\
    'PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\\nPV1|1|I|icu-demo^^bed-1\\n' \\
      | python -m telemetry.hl7.send --port 12575
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys

from telemetry.hl7.mllp import mllp_send

EXIT_CODES = {"AA": 0, "CA": 0, "AE": 1, "CE": 1, "AR": 2, "CR": 2}


def message_text(raw: bytes) -> bytes:
    """Segments separated by CR, blank lines and trailing line ends dropped."""
    lines = [line for line in re.split(rb"\r\n|\r|\n", raw) if line.strip()]
    return b"\r".join(lines)


def ack_code(reply: bytes) -> str:
    for segment in reply.split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(segment[3:4] or b"|")
            return fields[1].decode("latin-1") if len(fields) > 1 else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telemetry.hl7.send", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default="-", help="the message (default: standard input)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12575)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    parser.add_argument("--tls-ca", help="use TLS, trusting this CA file")
    args = parser.parse_args(argv)
    if args.file == "-":
        raw = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as source:
            raw = source.read()
    tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    try:
        reply = asyncio.run(mllp_send(args.host, args.port, message_text(raw), timeout=args.timeout, tls=tls))
    except (OSError, TimeoutError) as exc:
        print(f"no reply from {args.host}:{args.port}: {exc or type(exc).__name__}", file=sys.stderr)
        return 3
    sys.stdout.write(reply.decode("utf-8", errors="replace").replace("\r", "\n") + "\n")
    return EXIT_CODES.get(ack_code(reply), 3)


if __name__ == "__main__":
    sys.exit(main())
