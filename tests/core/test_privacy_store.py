"""The privacy key store and the erasable privacy store on real SQLite files: keys that work,
stay private and are gone for good when destroyed; pseudonyms made once however many
writers race; openings; erasure in two steps that survives a crash between them."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from audit_core.errors import PrivacyError, SubjectNotFound
from audit_core.privacy.commitment import KCV_MESSAGE, derive_keys, mac
from audit_core.privacy.keys import LocalKeyStore, key_check_value, open_keystore
from audit_core.privacy.store import Opening, PrivacyStore

IDENTIFIER = "erase-me-7f3a9c@example.com"
OTHER = "keep-me-51be02@example.com"


def _raw_key(path: Path, pseudonym: str) -> bytes:
    """The stored key, read behind the key store's back (tests only)."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT key FROM keys WHERE pseudonym = ?", (pseudonym,)).fetchone()
    conn.close()
    return bytes(row[0])


def _file_bytes(path: Path) -> bytes:
    """The database file and its write-ahead log, as they are on disk."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _in_child(body: Callable[[], None]) -> int:
    """Fork; the child runs ``body`` and exits 0 (1 on an exception); returns the pid."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
            os._exit(0)
        finally:
            os._exit(1)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    """Where the key store file goes."""
    return tmp_path / "keys.db"


@pytest.fixture
def keys(key_path: Path) -> Iterator[LocalKeyStore]:
    """A fresh local key store."""
    store = LocalKeyStore(key_path)
    yield store
    store.close()


class TestLocalKeyStore:
    """LocalKeyStore: one SQLite file of per-subject keys."""

    def test_round_trip(self, keys: LocalKeyStore) -> None:
        """A created key MACs, seals and unseals; destroy reports whether a key was there."""
        keys.create("ps-a")
        assert 32 == len(keys.mac("ps-a", b"m"))
        assert keys.mac("ps-a", b"m") == keys.mac("ps-a", b"m")
        sealed = keys.seal("ps-a", b"value", b"aad")
        assert b"value" == keys.unseal("ps-a", sealed, b"aad")
        assert keys.destroy("ps-a")
        assert not keys.destroy("ps-a")

    def test_create_never_replaces(self, keys: LocalKeyStore) -> None:
        """A second create of one pseudonym keeps the first key."""
        keys.create("ps-a")
        before = keys.mac("ps-a", b"m")
        keys.create("ps-a")
        assert before == keys.mac("ps-a", b"m")

    def test_derived_keys(self, keys: LocalKeyStore, key_path: Path) -> None:
        """mac uses the HKDF commitment key, distinct from the sealing key and per subject."""
        keys.create("ps-a")
        keys.create("ps-b")
        derived = derive_keys(_raw_key(key_path, "ps-a"))
        assert derived.mac != derived.seal
        assert mac(derived.mac, b"m") == keys.mac("ps-a", b"m")
        assert keys.mac("ps-a", b"m") != keys.mac("ps-b", b"m")

    def test_wrong_aad_fails(self, keys: LocalKeyStore) -> None:
        """A sealed value opens only with its own associated data and subject."""
        keys.create("ps-a")
        keys.create("ps-b")
        sealed = keys.seal("ps-a", b"value", b"aad")
        with pytest.raises(PrivacyError, match="does not open"):
            keys.unseal("ps-a", sealed, b"other")
        with pytest.raises(PrivacyError, match="does not open"):
            keys.unseal("ps-b", sealed, b"aad")

    def test_missing_key_error_names_no_key(self, keys: LocalKeyStore, key_path: Path) -> None:
        """Using a destroyed key fails naming the pseudonym, never the key's bytes."""
        keys.create("ps-a")
        raw = _raw_key(key_path, "ps-a")
        keys.destroy("ps-a")
        uses: list[Callable[[], bytes]] = [
            lambda: keys.mac("ps-a", b"m"),
            lambda: keys.seal("ps-a", b"v", b"a"),
            lambda: keys.unseal("ps-a", bytes(40), b"a"),
        ]
        for use in uses:
            with pytest.raises(PrivacyError) as caught:
                use()
            text = str(caught.value) + repr(caught.value)
            assert "no key for ps-a (erased?)" == str(caught.value)
            assert raw.hex() not in text
            assert repr(raw) not in text

    def test_file_mode(self, keys: LocalKeyStore, key_path: Path) -> None:
        """The key file and its write-ahead log are readable by their owner only."""
        keys.create("ps-a")
        assert 0o600 == stat.S_IMODE(key_path.stat().st_mode)
        assert 0o600 == stat.S_IMODE(Path(f"{key_path}-wal").stat().st_mode)

    def test_open_key_file_refused(self, key_path: Path) -> None:
        """A key file others may read is refused, with the chmod to run."""
        LocalKeyStore(key_path).close()
        key_path.chmod(0o644)
        with pytest.raises(PrivacyError, match="chmod 600"):
            LocalKeyStore(key_path)

    def test_destroyed_key_gone_from_files(self, keys: LocalKeyStore, key_path: Path) -> None:
        """After destroy the key's bytes are in neither the database file nor its -wal."""
        for i in range(20):
            keys.create(f"ps-{i}")
        raw = _raw_key(key_path, "ps-7")
        assert raw in _file_bytes(key_path)
        keys.destroy("ps-7")
        assert raw not in _file_bytes(key_path)
        assert b"ps-8" in _file_bytes(key_path)

    def test_read_only(self, keys: LocalKeyStore, key_path: Path) -> None:
        """A read-only store uses keys and refuses to create or destroy them."""
        keys.create("ps-a")
        reader = LocalKeyStore(key_path, read_only=True)
        try:
            assert keys.mac("ps-a", b"m") == reader.mac("ps-a", b"m")
            with pytest.raises(PrivacyError, match="read-only"):
                reader.create("ps-b")
            with pytest.raises(PrivacyError, match="read-only"):
                reader.destroy("ps-a")
        finally:
            reader.close()
        assert b"" != keys.mac("ps-a", b"m")

    def test_read_only_missing(self, tmp_path: Path) -> None:
        """A read-only open of a missing key file fails and creates nothing."""
        with pytest.raises(PrivacyError, match="no key store"):
            LocalKeyStore(tmp_path / "absent.db", read_only=True)
        assert not (tmp_path / "absent.db").exists()

    def test_destroy_elsewhere_drops_cache(self, keys: LocalKeyStore, key_path: Path) -> None:
        """A key destroyed by another connection is not used from this one's cache to open
        (writers reach keys through the store's subject rows, which an erasure deletes
        first: their cache is trusted)."""
        keys.create("ps-a")
        sealed = keys.seal("ps-a", b"v", b"aad")  # cached
        other = LocalKeyStore(key_path)
        try:
            assert other.destroy("ps-a")
        finally:
            other.close()
        with pytest.raises(PrivacyError, match="no key for ps-a"):
            keys.unseal("ps-a", sealed, b"aad")

    def test_forked_child(self, keys: LocalKeyStore) -> None:
        """A forked child reconnects and gets the same MAC; the parent's store still works."""
        keys.create("ps-a")
        expected = keys.mac("ps-a", b"m")
        read, write = os.pipe()

        def child() -> None:
            os.write(write, keys.mac("ps-a", b"m"))
            keys.create("ps-child")

        pid = _in_child(child)
        assert 0 == _exit_code(pid)
        assert expected == os.read(read, 64)
        os.close(read)
        os.close(write)
        assert 32 == len(keys.mac("ps-child", b"m"))
        assert expected == keys.mac("ps-a", b"m")

    def test_threads(self, keys: LocalKeyStore) -> None:
        """Threads sharing one store create, MAC and seal without errors or mix-ups."""
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(25):
                    name = f"ps-{i}-{j}"
                    keys.create(name)
                    sealed = keys.seal(name, name.encode(), b"aad")
                    assert name.encode() == keys.unseal(name, sealed, b"aad")
                    assert keys.mac(name, b"m") != keys.mac("ps-shared", b"m")
            except Exception as exc:  # noqa: BLE001 - reported to the main thread below
                errors.append(exc)

        keys.create("ps-shared")
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [] == errors

    def test_key_check_value(self, keys: LocalKeyStore) -> None:
        """The key check value is 8 bytes of the commitment key's MAC of KCV_MESSAGE, hex."""
        keys.create("ps-a")
        kcv = key_check_value(keys, "ps-a")
        assert keys.mac("ps-a", KCV_MESSAGE)[:8].hex() == kcv
        assert 16 == len(kcv)


class TestOpenKeystore:
    """open_keystore: local URLs and the entry point seam."""

    @pytest.mark.parametrize("form", ["file:{}", "sqlite:///{}", "{}"])
    def test_local_forms(self, tmp_path: Path, form: str) -> None:
        """file:PATH, sqlite:///PATH and a plain path open a LocalKeyStore there."""
        path = tmp_path / "k.db"
        store = open_keystore(form.format(path))
        try:
            assert isinstance(store, LocalKeyStore)
            assert path == store.path
        finally:
            store.close()

    def test_unknown_scheme(self) -> None:
        """An unknown scheme names itself and the documentation."""
        with pytest.raises(PrivacyError, match=r"'vault'.*docs/PRIVACY\.md"):
            open_keystore("vault://vault.example:8200/transit")

    def test_memory_refused(self) -> None:
        """Keys in memory would die with the process: refused."""
        with pytest.raises(PrivacyError, match="needs a file"):
            open_keystore("sqlite:///:memory:")


# -- the privacy store -----------------------------------------------------------------------


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A privacy store URL (SQLite here; tests/postgres overrides it)."""
    return f"sqlite:///{tmp_path / 'privacy.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[PrivacyStore]:
    """A writable privacy store."""
    opened = PrivacyStore(store_url)
    yield opened
    opened.close()


def _kcv(pseudonym: str) -> str:
    return "kcv-" + pseudonym[-4:]


def _fill(store: PrivacyStore, identifier: str, records: int, values: int) -> str:
    """``records`` records of ``identifier`` holding ``values`` openings in all."""
    with store.writing() as w:
        pseudonym, _ = w.pseudonym(identifier)
        nonces = [os.urandom(16) for _ in range(records)]
        for i in range(values):
            nonce = nonces[i % records]
            w.add(Opening(nonce, f"/data/f{i}", "c", pseudonym, "commit", b"sealed-" + nonce))
    return pseudonym


def _race(n: int, body: Callable[[], object]) -> list[object]:
    """``body`` in ``n`` threads started together; their results (exceptions re-raised)."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = body()
        except Exception as exc:  # noqa: BLE001 - re-raised by the caller's thread below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


class StoreContract:
    """What every privacy store backend does (SQLite here, PostgreSQL in tests/postgres)."""

    def test_pseudonym_made_once(self, store: PrivacyStore) -> None:
        """A new identifier gets one random pseudonym; later lookups find the same."""
        with store.writing() as w:
            first, created = w.pseudonym(IDENTIFIER)
            again, created_again = w.pseudonym(IDENTIFIER)
        assert (True, False) == (created, created_again)
        assert first == again == store.pseudonym(IDENTIFIER)
        assert first.startswith("ps-")
        assert IDENTIFIER not in first
        assert store.pseudonym(OTHER) is None

    def test_pseudonym_race_threads_one_store(self, store: PrivacyStore) -> None:
        """Threads sharing a store racing on one new identifier all get one pseudonym."""

        def body() -> tuple[str, bool]:
            with store.writing() as w:
                return w.pseudonym(IDENTIFIER)

        results = _race(8, body)
        assert 1 == len({r[0] for r in results})  # type: ignore[index]
        assert 1 == sum(r[1] for r in results)  # type: ignore[index]

    def test_pseudonym_race_threads_own_stores(self, store: PrivacyStore, store_url: str) -> None:
        """Threads each with its own connection racing on one identifier: one pseudonym."""

        def body() -> tuple[str, bool]:
            mine = PrivacyStore(store_url)
            try:
                with mine.writing() as w:
                    return w.pseudonym(IDENTIFIER)
            finally:
                mine.close()

        results = _race(6, body)
        assert [store.pseudonym(IDENTIFIER)] * 6 == [r[0] for r in results]  # type: ignore[index]
        assert 1 == sum(r[1] for r in results)  # type: ignore[index]

    def test_pseudonym_race_processes(self, store: PrivacyStore, store_url: str) -> None:
        """Two processes racing on one new identifier end with one pseudonym."""
        go_read, go_write = os.pipe()
        out_read, out_write = os.pipe()

        def child() -> None:
            os.read(go_read, 1)  # wait for the start signal
            mine = PrivacyStore(store_url)
            with mine.writing() as w:
                pseudonym, created = w.pseudonym(IDENTIFIER)
            os.write(out_write, f"{pseudonym} {int(created)}\n".encode())

        pids = [_in_child(child), _in_child(child)]
        os.write(go_write, b"gg")
        assert [0, 0] == [_exit_code(p) for p in pids]
        os.close(out_write)
        with os.fdopen(out_read) as out:
            lines = sorted(out.read().split("\n")[:2])
        for fd in (go_read, go_write):
            os.close(fd)
        pseudonym = store.pseudonym(IDENTIFIER)
        assert sorted([f"{pseudonym} 0", f"{pseudonym} 1"]) == lines

    def test_openings_round_trip(self, store: PrivacyStore) -> None:
        """Openings come back as stored, by (nonce, pointer) and by subject."""
        with store.writing() as w:
            a, _ = w.pseudonym(IDENTIFIER)
            b, _ = w.pseudonym(OTHER)
            first = Opening(bytes(16), "/actor/id", "c", a, "commit", b"\x00sealed\xff")
            second = Opening(bytes(16), "/data/x", "c", b, "sealed", None)
            third = Opening(b"\x01" * 16, "/data/x", "d", a, "commit", b"s")
            for o in (first, second, third):
                w.add(o)
        assert first == store.opening(bytes(16), "/actor/id")
        assert second == store.opening(bytes(16), "/data/x")
        assert store.opening(bytes(16), "/data/y") is None
        assert [first, second, third] == list(store.openings())
        assert [first, third] == list(store.openings(a))
        assert "sealed" not in repr(first).replace("'sealed'", "")

    def test_duplicate_opening_rolls_back(self, store: PrivacyStore) -> None:
        """A second opening of one (nonce, pointer) fails and its transaction stores nothing."""
        with store.writing() as w:
            p, _ = w.pseudonym(IDENTIFIER)
            w.add(Opening(bytes(16), "/a", "c", p, "commit", b"s"))

        def clash() -> None:
            with store.writing() as w:
                q, _ = w.pseudonym(OTHER)
                w.add(Opening(bytes(16), "/a", "c", q, "commit", b"secret-value"))

        with pytest.raises(PrivacyError) as caught:
            clash()
        assert "secret-value" not in str(caught.value)
        assert store.pseudonym(OTHER) is None
        assert 1 == store.stats()["openings"]

    def test_erasure(self, store: PrivacyStore) -> None:
        """begin counts records and values and deletes the subject; finish deletes the
        openings and marks the erasure done; other subjects are untouched."""
        pseudonym = _fill(store, IDENTIFIER, records=3, values=7)
        kept = _fill(store, OTHER, records=2, values=2)
        begun = store.begin_erasure(IDENTIFIER, kcv=_kcv, basis="GDPR Art. 17(1)(b)", reason="r")
        assert (pseudonym, _kcv(pseudonym), 3, 7, "pending") == (
            begun.pseudonym,
            begun.kcv,
            begun.records,
            begun.values,
            begun.state,
        )
        assert ("GDPR Art. 17(1)(b)", "r") == (begun.basis, begun.reason)
        assert [begun] == store.pending_erasures()
        assert store.pseudonym(IDENTIFIER) is None
        with store.writing() as w:
            fresh, created = w.pseudonym(IDENTIFIER)
        assert created
        assert fresh != pseudonym
        done = store.finish_erasure(pseudonym)
        assert "done" == done.state
        assert (3, 7) == (done.records, done.values)
        assert [] == store.pending_erasures()
        assert [done] == store.erasures()
        assert [] == list(store.openings(pseudonym))
        assert 2 == len(list(store.openings(kept)))
        assert {"subjects": 2, "openings": 2, "erasures_pending": 0, "erasures_done": 1} == (
            store.stats()
        )
        assert done == store.finish_erasure(pseudonym)  # idempotent

    def test_unknown_subject(self, store: PrivacyStore) -> None:
        """Erasing an identifier never recorded: SubjectNotFound, not echoing it; nothing noted."""
        with pytest.raises(SubjectNotFound) as caught:
            store.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r")
        assert IDENTIFIER not in str(caught.value)
        assert [] == store.erasures()

    def test_erased_subject(self, store: PrivacyStore) -> None:
        """Erasing an identifier already erased: SubjectNotFound."""
        _fill(store, IDENTIFIER, records=1, values=1)
        store.finish_erasure(
            store.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r").pseudonym
        )
        with pytest.raises(SubjectNotFound, match="no data subject by that identifier"):
            store.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r")

    def test_finish_without_begin(self, store: PrivacyStore) -> None:
        """Finishing an erasure never begun is an error naming the pseudonym."""
        with pytest.raises(PrivacyError, match="no erasure of ps-nobody"):
            store.finish_erasure("ps-nobody")

    def test_kcv_failure_rolls_back(self, store: PrivacyStore) -> None:
        """When the key check value cannot be computed, nothing is erased or noted."""
        pseudonym = _fill(store, IDENTIFIER, records=1, values=1)

        def no_key(p: str) -> str:
            raise PrivacyError(f"no key for {p} (erased?)")

        with pytest.raises(PrivacyError, match="no key"):
            store.begin_erasure(IDENTIFIER, kcv=no_key, basis="b", reason="r")
        assert pseudonym == store.pseudonym(IDENTIFIER)
        assert [] == store.erasures()

    def test_pending_survives_crash(self, store: PrivacyStore, store_url: str) -> None:
        """A process killed (SIGKILL) between begin and finish leaves the erasure pending."""
        pseudonym = _fill(store, IDENTIFIER, records=2, values=3)
        ready_read, ready_write = os.pipe()
        block_read, block_write = os.pipe()

        def child() -> None:
            mine = PrivacyStore(store_url)
            mine.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r")
            os.write(ready_write, b"1")
            os.read(block_read, 1)  # never written: killed here

        pid = _in_child(child)
        assert b"1" == os.read(ready_read, 1)
        os.kill(pid, signal.SIGKILL)
        assert -signal.SIGKILL == _exit_code(pid)
        for fd in (ready_read, ready_write, block_read, block_write):
            os.close(fd)
        after = PrivacyStore(store_url)
        try:
            pending = after.pending_erasures()
            assert [(pseudonym, 2, 3, "pending")] == [
                (e.pseudonym, e.records, e.values, e.state) for e in pending
            ]
            assert "done" == after.finish_erasure(pseudonym).state
        finally:
            after.close()

    def test_read_only(self, store: PrivacyStore, store_url: str) -> None:
        """A read-only store reads and refuses every write."""
        pseudonym = _fill(store, IDENTIFIER, records=1, values=2)
        reader = PrivacyStore(store_url, read_only=True)
        try:
            assert pseudonym == reader.pseudonym(IDENTIFIER)
            assert 2 == len(list(reader.openings()))
            with pytest.raises(PrivacyError, match="read-only"):
                reader.writing()
            with pytest.raises(PrivacyError, match="read-only"):
                reader.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r")
            with pytest.raises(PrivacyError, match="read-only"):
                reader.finish_erasure(pseudonym)
        finally:
            reader.close()


class TestSqliteStore(StoreContract):
    """The SQLite privacy store, plus what only a file can show."""

    def test_identifier_gone_from_files(self, store: PrivacyStore, tmp_path: Path) -> None:
        """After finish the identifier and the sealed values are in neither file nor -wal."""
        path = tmp_path / "privacy.db"
        _fill(store, OTHER, records=2, values=4)
        pseudonym = _fill(store, IDENTIFIER, records=3, values=5)
        sealed = [o.sealed for o in store.openings(pseudonym)]
        assert IDENTIFIER.encode() in _file_bytes(path)
        assert all(s is not None and s in _file_bytes(path) for s in sealed)
        begun = store.begin_erasure(IDENTIFIER, kcv=_kcv, basis="b", reason="r")
        store.finish_erasure(begun.pseudonym)
        raw = _file_bytes(path)
        assert IDENTIFIER.encode() not in raw
        assert not [s for s in sealed if s is not None and s in raw]
        assert OTHER.encode() in raw

    def test_file_mode(self, store: PrivacyStore, tmp_path: Path) -> None:
        """The store file is readable by its owner only."""
        _fill(store, IDENTIFIER, records=1, values=1)
        assert 0o600 == stat.S_IMODE((tmp_path / "privacy.db").stat().st_mode)

    def test_read_only_missing(self, tmp_path: Path) -> None:
        """A read-only open of a missing store fails and creates nothing."""
        with pytest.raises(PrivacyError, match="no privacy store"):
            PrivacyStore(f"sqlite:///{tmp_path / 'absent.db'}", read_only=True)
        assert not (tmp_path / "absent.db").exists()

    def test_bad_urls(self) -> None:
        """:memory:, unknown schemes and bad synchronous levels are PrivacyErrors."""
        with pytest.raises(PrivacyError, match="needs a file"):
            PrivacyStore("sqlite:///:memory:")
        with pytest.raises(PrivacyError, match="'mysql'"):
            PrivacyStore("mysql://u:pw@h/db")
        with pytest.raises(PrivacyError, match="synchronous"):
            PrivacyStore("x.db", synchronous="sometimes")
