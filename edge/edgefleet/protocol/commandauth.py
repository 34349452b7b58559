"""Signatures on commands and MACs on device records (docs/protocol.md, "Signatures and MACs").

The signed bytes of a message are ``domain || topic || "\\n" || payload``, where ``payload`` is
the message exactly as sent but with ``auth.sig`` emptied. Nothing is re-encoded to check a
signature: a verifier finds ``sig`` at a fixed place (``auth`` is the envelope's first field
and ``sig`` is the first field of ``auth``, so they follow ``schema`` directly), cuts it out
and checks the rest byte for byte. Fields a newer sender adds are therefore covered too, and
an older reader that ignores them still checks them.

Two domains keep a MAC of one kind from being replayed as the other: ``edgefleet-cmd/1`` for
cloud→device commands and ``edgefleet-rec/1`` for device→cloud records.

Commands are signed with Ed25519 (the cloud's command key) or, for commit-acks only, with
HMAC-SHA256 by the device's record key: a commit-ack goes out per stored batch, and an HMAC
costs the ingest a small fraction of a signature (bench/command_auth.py measures both).

``cryptography`` is imported only when an Ed25519 key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from edgefleet.protocol import topics
from edgefleet.protocol.errors import AuthError, KeyFileError
from edgefleet.protocol.messages import Auth, Envelope

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

COMMAND_DOMAIN: Final = b"edgefleet-cmd/1\n"
RECORD_DOMAIN: Final = b"edgefleet-rec/1\n"
RECORD_KEY_BYTES: Final = 32
# Commit-acks are answered within seconds; a late one is refused and the records are resent.
COMMIT_TTL_S: Final = 300.0
# Other commands wait in the broker's persistent session while a device is offline.
COMMAND_TTL_S: Final = 7 * 24 * 3600.0
REPLAY_WINDOW: Final = 4096
MAX_SIGNERS: Final = 256

Reason = Literal["unsigned", "bad-signature", "wrong-device", "replayed", "expired"]

_JSON_PREFIX: Final = b'{"schema":"'
_JSON_AUTH: Final = b'","auth":'
_JSON_SIG: Final = b'{"sig":"'
_JSON_AUTH_SIG: Final = _JSON_AUTH + _JSON_SIG
_MP_SCHEMA: Final = b"\xa6schema"
_MP_AUTH: Final = b"\xa4auth"
_MP_SIG: Final = b"\xa3sig"
_MP_NIL: Final = 0xC0
_MP_EMPTY: Final = b"\xa0"


_HMAC_CACHE_MAX: Final = 4096
_hmac_states: dict[bytes, tuple[Any, Any]] = {}
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 with the key's padded inner and outer states computed once per key.

    The ingest checks one MAC per message: the one-shot ``hmac.digest`` spends most of its
    time on the key schedule, three times the cost of the hashing itself.
    """
    states = _hmac_states.get(key)
    if states is None:
        block = (
            key.ljust(64, b"\0")
            if len(key) <= 64
            else hashlib.sha256(key).digest().ljust(64, b"\0")
        )
        states = (
            hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        )
        if len(_hmac_states) >= _HMAC_CACHE_MAX:
            _hmac_states.clear()
        _hmac_states[key] = states
    inner = states[0].copy()
    inner.update(data)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def b64_bytes(raw: bytes) -> bytes:
    """base64url without padding, as ASCII bytes (what a payload holds between the quotes)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=")


def b64(raw: bytes) -> str:
    """base64url without padding, as ``Auth.sig`` holds it."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """The bytes of a base64url ``sig`` (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _auth_value(payload: bytes) -> tuple[int, bool] | None:
    """Where the value of the envelope's ``auth`` starts, and whether the payload is JSON."""
    if payload.startswith(_JSON_PREFIX):
        end = payload.find(b'"', len(_JSON_PREFIX))
        if end < 0 or not payload.startswith(_JSON_AUTH, end):
            return None
        return end + len(_JSON_AUTH), True
    at = _msgpack_auth_value(payload)
    return None if at is None else (at, False)


def _msgpack_auth_value(payload: bytes) -> int | None:
    """:func:`_auth_value` of a headed MessagePack payload."""
    if payload[:2] != b"\xef\x01" or len(payload) < 3:
        return None
    i, head = 2, payload[2]
    if 0x80 <= head <= 0x8F:
        i += 1
    elif head == 0xDE:
        i += 3
    else:
        return None
    if not payload.startswith(_MP_SCHEMA, i):
        return None
    n, i = _mp_str(payload, i + len(_MP_SCHEMA))
    if n < 0 or not payload.startswith(_MP_AUTH, i + n):
        return None
    return i + n + len(_MP_AUTH)


def _mp_str(payload: bytes, i: int) -> tuple[int, int]:
    """(length, offset of the data) of the MessagePack string at ``i``; length -1 if none."""
    if i >= len(payload):
        return -1, i
    head = payload[i]
    if 0xA0 <= head <= 0xBF:
        return head & 0x1F, i + 1
    if head == 0xD9 and i + 1 < len(payload):
        return payload[i + 1], i + 2
    return -1, i


def sig_span(payload: bytes) -> tuple[int, int, bytes] | None:
    """(start, end, empty value) of the encoded ``auth.sig``; None when ``auth`` is null.

    Raises :class:`AuthError` when the payload has an ``auth`` that is not where the signer
    puts it (someone else's encoder, or a tampered payload).
    """
    at = _auth_value(payload)
    if at is None:
        if b'"auth":' in payload or _MP_AUTH in payload:
            raise AuthError("the message's auth is not where a signer puts it (after schema)")
        return None
    pos, is_json = at
    if is_json:
        if payload.startswith(b"null", pos):
            return None
        if not payload.startswith(_JSON_SIG, pos):
            raise AuthError("the message's auth does not start with its sig")
        start = pos + len(_JSON_SIG)
        end = payload.find(b'"', start)
        if end < 0:
            raise AuthError("the message's sig is not terminated")
        return start, end, b""
    if pos < len(payload) and payload[pos] == _MP_NIL:
        return None
    if pos >= len(payload) or not 0x80 <= payload[pos] <= 0x8F:
        raise AuthError("the message's auth is not a small map")
    if not payload.startswith(_MP_SIG, pos + 1):
        raise AuthError("the message's auth does not start with its sig")
    start = pos + 1 + len(_MP_SIG)
    n, data = _mp_str(payload, start)
    if n < 0:
        raise AuthError("the message's sig is not a string")
    return start, data + n, _MP_EMPTY


def signed_bytes(domain: bytes, topic: str, payload: bytes, span: tuple[int, int, bytes]) -> bytes:
    """What a signature covers: the domain, the topic and the payload with ``sig`` emptied."""
    start, end, empty = span
    return b"".join((domain, topic.encode(), b"\n", payload[:start], empty, payload[end:]))


def _splice(payload: bytes, sig: str) -> bytes:
    """``payload`` (with an empty sig) holding ``sig`` instead."""
    span = sig_span(payload)
    assert span is not None, "a payload to sign carries an auth with an empty sig"
    start, end, empty = span
    raw = sig.encode()
    enc = raw if not empty else (bytes([0xD9, len(raw)]) + raw)
    return payload[:start] + enc + payload[end:]


def _insert_auth(payload: bytes, auth: Auth) -> bytes:
    """``payload`` (encoded with ``auth`` null) with ``auth`` in its place, sig still empty."""
    at = _auth_value(payload)
    if at is None:
        raise AuthError("only payloads encoded by edgefleet.protocol.codec can be sealed")
    pos, is_json = at
    if is_json:
        if not payload.startswith(b"null", pos):
            raise AuthError("the payload already carries an auth")
        return payload[:pos] + msgspec.json.encode(auth) + payload[pos + 4 :]
    if payload[pos] != _MP_NIL:
        raise AuthError("the payload already carries an auth")
    return payload[:pos] + msgspec.msgpack.encode(auth) + payload[pos + 1 :]


# ---------------------------------------------------------------- records (device → cloud)


def record_auth(device_id: str) -> Auth:
    """The (unsigned) auth of a record MAC by ``device_id``'s record key."""
    return Auth(alg="hmac-sha256", key_id=device_id)


def seal_record(key: bytes, topic: str, payload: bytes, device_id: str) -> bytes:
    """A device message (encoded with ``auth`` null) MAC'd with the device's record key."""
    unsigned = _insert_auth(payload, record_auth(device_id))
    span = sig_span(unsigned)
    assert span is not None
    mac = hmac_sha256(key, signed_bytes(RECORD_DOMAIN, topic, unsigned, span))
    return _splice(unsigned, b64(mac))


def record_mac_ok(key: bytes, topic: str, payload: bytes, msg: Envelope) -> bool:
    """Whether a device message carries a valid MAC by ``key`` for its sender."""
    auth = msg.auth
    if auth is None or auth.alg != "hmac-sha256" or auth.key_id != msg.device_id:
        return False
    # JSON as seal_record writes it, found in three searches: the ingest checks every message,
    # and sig_span's general walk is a sixth of the check. Whatever this misses, sig_span judges.
    q = payload.find(b'"', len(_JSON_PREFIX)) if payload.startswith(_JSON_PREFIX) else -1
    start = q + len(_JSON_AUTH_SIG)
    if q > 0 and payload.startswith(_JSON_AUTH_SIG, q) and (end := payload.find(b'"', start)) > 0:
        given = payload[start:end]
        data = b"".join((RECORD_DOMAIN, topic.encode(), b"\n", payload[:start], payload[end:]))
    else:
        try:
            span = sig_span(payload)
        except AuthError:
            return False
        if span is None:
            return False
        start, end, empty = span
        # The sig as it stands in the payload (MessagePack: behind its str header), compared
        # as base64 text: no decoding of the sender's text.
        given = payload[start:end] if not empty else payload[_mp_str(payload, start)[1] : end]
        data = signed_bytes(RECORD_DOMAIN, topic, payload, span)
    return hmac.compare_digest(b64_bytes(hmac_sha256(key, data)), given)


def load_record_key(path: Path) -> bytes:
    """Read a record key file (32 random bytes), raising :class:`KeyFileError` with the fix."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the record key {path}: {exc.strerror}") from None
    if len(raw) != RECORD_KEY_BYTES:
        raise KeyFileError(
            f"{path} holds {len(raw)} bytes, a record key is {RECORD_KEY_BYTES} random bytes; "
            "write a new one with `edgefleet agent provision` or "
            "`head -c 32 /dev/urandom > FILE && chmod 600 FILE`"
        )
    return raw


def write_record_key(path: Path, key: bytes | None = None) -> bytes:
    """Write ``key`` (or 32 new random bytes) to ``path`` with mode 0600; returns the key."""
    import os

    key = key if key is not None else os.urandom(RECORD_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


# ---------------------------------------------------------------- commands (cloud → device)


class Signer:
    """Signs commands for one cloud process: one signer id, one strictly increasing sequence.

    The sequence starts at the wall clock in microseconds, so a restarted process (a new
    signer id anyway) never reuses numbers a device may remember.
    """

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        *,
        signer_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import os

        from edgefleet.protocol.signing import key_id

        self._key = private_key
        self.key_id = key_id(private_key.public_key())
        self.signer_id = signer_id or f"s-{os.urandom(6).hex()}"
        self._clock = clock
        self._lock = threading.Lock()
        self._cseq = time.time_ns() // 1000

    def _next(self) -> int:
        with self._lock:
            self._cseq += 1
            return self._cseq

    def auth_for(self, topic: str, *, ttl_s: float, alg: str = "ed25519", key_id: str = "") -> Auth:
        """A fresh, unsigned ``auth`` for a command on ``topic``."""
        parsed = topics.parse(topic)
        now = self._clock()
        return Auth(
            alg=alg,  # type: ignore[arg-type]
            key_id=key_id or self.key_id,
            target=parsed.device,
            signer=self.signer_id,
            cseq=self._next(),
            issued_at=now,
            expires_at=now + ttl_s,
        )

    def seal(
        self,
        topic: str,
        message: Envelope,
        encode: Callable[[Envelope], bytes],
        *,
        ttl_s: float = COMMAND_TTL_S,
        mac_key: bytes | None = None,
    ) -> bytes:
        """The payload of ``message`` on ``topic``, signed (or MAC'd with ``mac_key``)."""
        if mac_key is not None:
            device = topics.parse(topic).device
            auth = self.auth_for(topic, ttl_s=ttl_s, alg="hmac-sha256", key_id=device)
        else:
            auth = self.auth_for(topic, ttl_s=ttl_s)
        unsigned = encode(msgspec.structs.replace(message, auth=auth))
        span = sig_span(unsigned)
        assert span is not None
        data = signed_bytes(COMMAND_DOMAIN, topic, unsigned, span)
        raw = hmac_sha256(mac_key, data) if mac_key is not None else self._key.sign(data)
        return _splice(unsigned, b64(raw))


class _Window:
    """IPsec-style anti-replay window of one signer: the highest cseq and those seen below it."""

    __slots__ = ("high", "seen")

    def __init__(self) -> None:
        self.high = -1
        self.seen: set[int] = set()

    def fresh(self, cseq: int, size: int) -> bool:
        return cseq > self.high or (cseq > self.high - size and cseq not in self.seen)

    def accept(self, cseq: int, size: int) -> None:
        self.seen.add(cseq)
        if cseq > self.high:
            self.high = cseq
            if len(self.seen) > 2 * size:
                floor = self.high - size
                self.seen = {s for s in self.seen if s > floor}


class CommandGuard:
    """The agent's check of every command: signature, target, expiry and replay.

    Expiry is judged by the cloud's clock as last seen, not the device's: a Pi without a
    real-time clock may boot with a wall clock hours or years off. The newest ``issued_at`` of
    a valid command, advanced by the device's monotonic clock since, is "now"; before the
    first valid command the device's wall clock stands in.
    """

    def __init__(
        self,
        device_id: str,
        command_keys: Sequence[Ed25519PublicKey | CommandKey] = (),
        record_key: bytes | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        window: int = REPLAY_WINDOW,
        max_signers: int = MAX_SIGNERS,
    ) -> None:
        from edgefleet.protocol.signing import key_id

        self.device_id = device_id
        self._keys = {k.key_id if isinstance(k, CommandKey) else key_id(k): k for k in command_keys}
        self._record_key = record_key
        self._clock = clock
        self._monotonic = monotonic
        self._size = window
        self._max_signers = max_signers
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._cloud: tuple[float, float] | None = None  # (issued_at, monotonic when seen)
        self.refused: Counter[str] = Counter()
        self.accepted = 0

    @property
    def has_keys(self) -> bool:
        """Whether any command can pass (at least one command key is configured)."""
        return bool(self._keys)

    def now(self) -> float:
        """The cloud's time as this device best knows it."""
        if self._cloud is None:
            return self._clock()
        issued, seen = self._cloud
        return issued + (self._monotonic() - seen)

    def check(self, topic: str, payload: bytes, msg: Envelope) -> None:
        """Raise :class:`AuthError` (and count it) unless ``msg`` is a valid command for us."""
        try:
            auth = self._verify(topic, payload, msg)
        except AuthError as exc:
            self.refused[exc.reason] += 1
            raise
        assert auth.signer is not None
        assert auth.cseq is not None
        assert auth.issued_at is not None
        win = self._windows.get(auth.signer)
        if win is None:
            win = self._windows[auth.signer] = _Window()
            while len(self._windows) > self._max_signers:
                self._windows.popitem(last=False)
        self._windows.move_to_end(auth.signer)
        win.accept(auth.cseq, self._size)
        if self._cloud is None or auth.issued_at > self.now():
            self._cloud = (auth.issued_at, self._monotonic())
        self.accepted += 1

    def _verify(self, topic: str, payload: bytes, msg: Envelope) -> Auth:
        auth = msg.auth
        if auth is None:
            raise AuthError("the command is not signed", reason="unsigned")
        span = sig_span(payload)
        if span is None:
            raise AuthError("the command is not signed", reason="unsigned")
        if (
            auth.target is None
            or auth.signer is None
            or auth.cseq is None
            or auth.issued_at is None
            or auth.expires_at is None
        ):
            raise AuthError("the command's auth lacks target, signer, cseq or expiry")
        self._check_sig(auth, signed_bytes(COMMAND_DOMAIN, topic, payload, span))
        parsed = topics.parse(topic)
        if auth.target != parsed.device or auth.target not in (self.device_id, topics.BROADCAST):
            raise AuthError(
                f"the command is for {auth.target!r}, not this device", reason="wrong-device"
            )
        if auth.alg == "hmac-sha256" and auth.target != self.device_id:
            raise AuthError("a MAC'd command must name its device", reason="wrong-device")
        if auth.expires_at < self.now():
            raise AuthError("the command expired before it arrived", reason="expired")
        win = self._windows.get(auth.signer)
        if win is not None and not win.fresh(auth.cseq, self._size):
            raise AuthError(
                f"command {auth.signer}/{auth.cseq} was seen already or is too old",
                reason="replayed",
            )
        return auth

    def _check_sig(self, auth: Auth, data: bytes) -> None:
        try:
            sig = unb64(auth.sig)
        except ValueError:
            raise AuthError("the command's sig is not base64url") from None
        if auth.alg == "hmac-sha256":
            key = self._record_key
            if key is None or auth.key_id != self.device_id:
                raise AuthError("a MAC'd command, but this device holds no record key for it")
            if not hmac.compare_digest(hmac_sha256(key, data), sig):
                raise AuthError("the command's MAC does not match")
            return
        pub = self._keys.get(auth.key_id)
        if pub is None:
            raise AuthError(f"the command is signed by key {auth.key_id}, not a trusted one")
        from cryptography.exceptions import InvalidSignature

        try:
            pub.verify(sig, data)
        except InvalidSignature:
            raise AuthError("the command's signature does not match") from None


# An Ed25519 SubjectPublicKeyInfo is this fixed DER prefix and the 32-byte key (RFC 8410).
_ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")


class CommandKey:
    """An Ed25519 public key that may sign commands, read without ``cryptography``.

    ``cryptography`` costs the agent about 8 MB of RSS (docs/agent.md). A provisioned device
    gets its commit-acks and its own commands MAC'd with its record key (stdlib ``hmac``), so
    the library is imported only when an Ed25519-signed command (a broadcast, or any command to
    a device without a record key) is first verified.
    """

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyFileError("an Ed25519 public key is 32 bytes")
        self.raw = raw
        # The same id as edgefleet.protocol.signing.key_id, without loading cryptography.
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]
        self._key: Ed25519PublicKey | None = None

    @classmethod
    def from_pem(cls, path: Path) -> CommandKey:
        """Read a PEM Ed25519 public key (``keys/command.pub``), raising with the fix."""
        try:
            text = Path(path).read_text("ascii")
        except OSError as exc:
            raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise KeyFileError(f"{path} is not a PEM public key") from None
        lines = [ln.strip() for ln in text.strip().splitlines()]
        if (
            len(lines) < 3
            or lines[0] != "-----BEGIN PUBLIC KEY-----"
            or (lines[-1] != "-----END PUBLIC KEY-----")
        ):
            raise KeyFileError(f"{path} is not a PEM public key")
        try:
            der = base64.b64decode("".join(lines[1:-1]), validate=True)
        except binascii.Error:
            raise KeyFileError(f"{path} is not a PEM public key (bad base64)") from None
        if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        return cls(der[len(_ED25519_SPKI_PREFIX) :])

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``cryptography.exceptions.InvalidSignature`` unless ``signature`` is good."""
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        self._key.verify(signature, data)


def load_command_keys(paths: Iterable[str | Path]) -> list[CommandKey]:
    """The public keys that may sign commands (``[trust] command_keys``)."""
    return [CommandKey.from_pem(Path(p)) for p in paths]


def key_digest(key: bytes) -> str:
    """A short fingerprint of a record key, for logs (never the key)."""
    return hashlib.sha256(b"edgefleet-record-key\n" + key).hexdigest()[:16]
