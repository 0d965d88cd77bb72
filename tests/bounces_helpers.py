"""Helpers for the bounce, SNS and DKIM tests: keys and certificates made with the openssl
command (an implementation independent of the code under test), a real HTTPS server on
loopback that serves the SNS signing certificate and the SubscribeURL, and SNS signing."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOPIC_ARN = "arn:aws:sns:eu-north-1:123456789012:newsletter-ses"


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if result.returncode:
        raise RuntimeError(f"openssl {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result.stdout


def rsa_key(path: Path, bits: int = 2048) -> Path:
    openssl("genrsa", "-out", str(path), str(bits))
    return path


def dkim_dns_record(key: Path) -> bytes:
    """The TXT record to publish at <selector>._domainkey.<domain> for this private key."""
    der = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def self_signed_cert(key: Path, path: Path, *, cn: str = "localhost", days: int = 2) -> Path:
    openssl("req", "-x509", "-new", "-key", str(key), "-out", str(path), "-days", str(days),
            "-subj", f"/CN={cn}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return path


class Pki:
    """Keys and certificates for one test session."""

    def __init__(self, directory: Path):
        self.tls_key = rsa_key(directory / "tls.key")
        self.tls_cert = self_signed_cert(self.tls_key, directory / "tls.pem")  # also the CA bundle
        self.sns_key = rsa_key(directory / "sns.key")
        self.sns_cert = self_signed_cert(self.sns_key, directory / "sns.pem", cn="sns.amazonaws.com")
        self.forger_key = rsa_key(directory / "forger.key")


class HttpsServer:
    """Serves `files` (path -> bytes) over HTTPS on 127.0.0.1, as host "localhost"; records GETs."""

    def __init__(self, pki: Pki):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                server.requests.append(self.path)
                body = server.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.tls_cert), str(pki.tls_key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sns_sign(message: dict, key: Path, version: str = "1") -> dict:
    """The message with SignatureVersion and Signature, signed by `openssl dgst` as SNS does."""
    from newsletter.web.hooks.sns import string_to_sign  # the canonical string per the AWS docs

    message = {**message, "SignatureVersion": version}
    digest = {"1": "-sha1", "2": "-sha256"}[version]
    signature = openssl("dgst", digest, "-sign", str(key), stdin=string_to_sign(message))
    message["Signature"] = base64.b64encode(signature).decode("ascii")
    return message


def sns_notification(ses: dict, cert_url: str, *, key: Path, version: str = "1",
                     topic: str = TOPIC_ARN, subject: str | None = "Amazon SES Email Event Notification",
                     timestamp: str | None = None) -> dict:
    message = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": json.dumps(ses),
        "Timestamp": timestamp or now_stamp(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.eu-north-1.amazonaws.com/?Action=Unsubscribe",
    }
    if subject is not None:
        message["Subject"] = subject
    return sns_sign(message, key, version)


def ses_bounce(*emails: str, bounce_type: str = "Permanent") -> dict:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": email, "action": "failed", "status": "5.1.1",
                 "diagnosticCode": "smtp; 550 5.1.1 user unknown"} for email in emails],
            "timestamp": "2026-11-23T07:01:02.000Z",
            "feedbackId": "0100017-bounce",
        },
        "mail": {"messageId": "0100017abc", "source": "nyhetsbrev@norrsken.example",
                 "destination": list(emails)},
    }


def ses_complaint(*emails: str) -> dict:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": email} for email in emails],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-11-23T08:00:00.000Z",
            "feedbackId": "0100017-complaint",
        },
        "mail": {"messageId": "0100017def", "source": "nyhetsbrev@norrsken.example",
                 "destination": list(emails)},
    }


def post_sns(client, path: str, message: dict):
    """POST like SNS does: text/plain JSON with the x-amz-sns-message-type header."""
    return client.post(path, data=json.dumps(message), content_type="text/plain; charset=UTF-8",
                       headers={"x-amz-sns-message-type": message.get("Type", "")})
