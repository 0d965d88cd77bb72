"""A real IMAP/POP3 server for the bounce-mailbox tests: Debian's Dovecot, configured in a
temporary directory and listening on loopback ports (no system service is touched), and the
report samples of tests/fixtures/inbound filled in for a test's subscriber."""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from conftest import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"
PASSWORD = "hemligt/2026"  # a "/" to encode in the URL

# Placeholders of the samples. The Postfix DSN is the very report a Postfix 3.7 wrote for an
# unknown local user (see fixtures/inbound/README.md): its own addresses stand in for them.
_POSTFIX = {"@@VERP@@": "bounces+1.2.abcdefghijklmnop@lists.example.org",
            "@@EMAIL@@": "nosuchuser@norrsken.example"}


def sample(name: str, **values: str) -> bytes:
    """A sample from tests/fixtures/inbound with its placeholders (VERP, EMAIL, ...) filled in."""
    raw = (FIXTURES / name).read_bytes()
    for key, value in values.items():
        placeholder = f"@@{key.upper()}@@"
        raw = raw.replace(placeholder.encode(), value.encode())
        if placeholder in _POSTFIX:
            raw = raw.replace(_POSTFIX[placeholder].encode(), value.encode())
    return raw


class Dovecot:
    """Dovecot in `directory`, IMAP and POP3 on 127.0.0.1; any user name logs in with PASSWORD
    and gets a mailbox of its own (so each test takes a fresh one)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.imap_port, self.pop3_port = free_port(), free_port()
        for name in ("run", "state", "home"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        self.home = directory / "home"
        if os.geteuid() == 0:
            # Mail processes never run as root: the mailboxes belong to nobody, in a folder it can
            # reach (pytest's own temporary folders are private to root).
            user = pwd.getpwnam("nobody")
            uid, gid, login_user = user.pw_uid, user.pw_gid, "dovenull"
            self.home = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
            self.home.chmod(0o711)
            os.chown(self.home, uid, gid)
        else:
            uid, gid, login_user = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
        extra = "" if os.geteuid() == 0 else (
            f"default_internal_user = {login_user}\ndefault_login_user = {login_user}\n")
        (directory / "dovecot.conf").write_text(f"""\
base_dir = {directory}/run
state_dir = {directory}/state
instance_name = newsletter-test-{uuid.uuid4().hex[:8]}
log_path = {directory}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
{extra}passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.home}/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        config = str(self.directory / "dovecot.conf")
        self.process = subprocess.Popen([shutil.which("dovecot"), "-F", "-c", config],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=1).logout()
                return
            except OSError:
                if self.process.poll() is not None:
                    error = self.process.stderr.read().decode()
                    raise RuntimeError(f"dovecot did not start: {error}") from None
                time.sleep(0.05)
        raise RuntimeError("dovecot did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        if self.home.parent != self.directory:
            shutil.rmtree(self.home, ignore_errors=True)

    def url(self, user: str, scheme: str = "imap") -> str:
        port = self.imap_port if scheme == "imap" else self.pop3_port
        return f"{scheme}://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/INBOX"

    def imap(self, user: str) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        conn.login(user, PASSWORD)
        conn.select("INBOX")
        return conn

    def deliver(self, user: str, raw: bytes) -> None:
        """Put a message into the user's INBOX (IMAP APPEND), as an MTA would have."""
        conn = self.imap(user)
        try:
            data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            status, data = conn.append("INBOX", None, None, data)
            assert status == "OK", data
        finally:
            conn.logout()

    def inbox(self, user: str) -> list[bytes]:
        """The messages left in the user's INBOX (read without changing anything)."""
        conn = self.imap(user)
        try:
            _, data = conn.uid("SEARCH", None, "UNDELETED")
            found = []
            for uid in (data[0] or b"").split():
                _, fetched = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                found += [item[1] for item in fetched if isinstance(item, tuple)]
            return found
        finally:
            conn.logout()

    def pop3_count(self, user: str) -> int:
        conn = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        try:
            conn.user(user)
            conn.pass_(PASSWORD)
            return conn.stat()[0]
        finally:
            conn.quit()
