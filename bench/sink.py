"""A fast SMTP sink that accepts everything and only counts messages (asyncio, no aiosmtpd).

    python bench/sink.py [--host 127.0.0.1] [--port 2525]

Speaks enough ESMTP for smtplib and smtp-source (EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT; PIPELINING), keeps no message, and reports on stdout the
same way Postfix's `smtp-sink -c` does: `sess=N quit=N mesg=N` ended by `\r`,
at the first message and then at most every 10 ms, so the benchmark reads the
same counter from either sink. Used when Postfix's smtp-sink is not installed
(`--sink asyncio` forces it). Parsing in `data_received` on a bytearray, one
reply write per command batch: tens of thousands of messages a second on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

END_OF_DATA = b"\r\n.\r\n"
EHLO_REPLY = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0\r\n"


class Counter:
    def __init__(self) -> None:
        self.sessions = 0
        self.quits = 0
        self.messages = 0
        self.reported = -1
        self.first = asyncio.Event()

    def line(self) -> str:
        return f"sess={self.sessions} quit={self.quits} mesg={self.messages}\r"

    def report(self) -> None:
        if self.messages != self.reported:
            self.reported = self.messages
            sys.stdout.write(self.line())
            sys.stdout.flush()


class Session(asyncio.Protocol):
    def __init__(self, counter: Counter):
        self.counter = counter
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.counter.sessions += 1
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        replies: list[bytes] = []
        while buffer:
            if self.in_data:
                # The end mark may straddle two reads: search from a little before the new data.
                end = buffer.find(END_OF_DATA, max(0, self.scan_from - 4))
                if end < 0:
                    self.scan_from = len(buffer)
                    break
                del buffer[: end + 5]
                self.in_data = False
                self.scan_from = 0
                self.counter.messages += 1
                if self.counter.messages == 1:
                    self.counter.report()
                replies.append(b"250 2.0.0 queued\r\n")
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = bytes(buffer[:4]).upper()
            del buffer[: end + 2]
            if verb == b"DATA":
                self.in_data = True
                # DATA right after the CRLF: an empty body is "\r\n.\r\n" with our CRLF counted.
                buffer[:0] = b"\r\n"
                self.scan_from = 0
                replies.append(b"354 go ahead\r\n")
            elif verb == b"EHLO":
                replies.append(EHLO_REPLY)
            elif verb == b"QUIT":
                replies.append(b"221 bye\r\n")
                self.counter.quits += 1
                self._flush(replies)
                if self.transport:
                    self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP, anything: yes
                replies.append(b"250 ok\r\n")
        self._flush(replies)

    def _flush(self, replies: list[bytes]) -> None:
        if replies and self.transport and not self.transport.is_closing():
            self.transport.write(b"".join(replies))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    counter = Counter()
    server = await loop.create_server(lambda: Session(counter), host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write("sess=0 quit=0 mesg=0\r")
    sys.stdout.flush()
    async with server:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.01)
            except TimeoutError:
                pass
            counter.report()
    counter.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
