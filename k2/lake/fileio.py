"""A table's FileIO that remembers the Avro metadata files the writer wrote: the next commit reads them from memory.

Every commit of a worker reads back what its previous commit wrote. pyiceberg reads the parent
snapshot's manifest list to carry its manifests over, reads each manifest of a bin it merges,
and asks the size of each manifest it has just written. On S3 each read is a HEAD and a GET and
each size a HEAD: on the local stack's S3 (moto, a quiet machine) about 8 and 5 ms, on a real
object store tens of milliseconds, one after the other inside the commit.

Iceberg never writes a file twice: every manifest and manifest list gets a new name (a UUID,
a snapshot id), and a file is only ever written whole, then read or deleted. So the bytes
written to a location are what any reader finds there for as long as the file exists, and a
manifest the table still lists is never deleted under a commit that builds on it (expiry removes
only what no snapshot lists; a commit built on a table that moved on is refused by the catalog).
:class:`RememberingFileIO` wraps the table's own FileIO (whatever pyiceberg chose for the
warehouse's scheme): it keeps the bytes of each Avro file written through it in a
:class:`Remembered` (the newest, up to a byte bound), answers a read or a size of those from
memory, and forgets a file it deletes. Everything else (Parquet data files, metadata JSON,
other writers' files) goes to the wrapped FileIO as before.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

from pyiceberg.io import FileIO, InputFile, InputStream, OutputFile, OutputStream

__all__ = ["Remembered", "RememberingFileIO"]

#: What the writer keeps at most: a manifest is at most ``commit.manifest.target-size-bytes``
#: (64 KiB on K2's tables), a manifest list a few KiB; this holds some hundreds of them.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def _remembers(location: str) -> bool:
    """Manifests and manifest lists (Avro); not data files, nor the metadata JSON the catalog swaps."""
    return location.endswith(".avro")


class Remembered:
    """The bytes of files written, by location: the newest kept up to ``max_bytes`` (thread-safe)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        """Reads and sizes answered from memory (for tests and the curious)."""

    def put(self, location: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._files.pop(location, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._files[location] = data
            while self._bytes > self.max_bytes:
                _, dropped = self._files.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, location: str) -> bytes | None:
        with self._lock:
            data = self._files.get(location)
            if data is not None:
                self._files.move_to_end(location)
                self.hits += 1
            return data

    def forget(self, location: str) -> None:
        with self._lock:
            data = self._files.pop(location, None)
            if data is not None:
                self._bytes -= len(data)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)


class RememberingFileIO(FileIO):
    """``inner`` (a table's FileIO), with the Avro files written through it remembered in ``memory``."""

    def __init__(self, inner: FileIO, memory: Remembered) -> None:
        super().__init__(inner.properties)
        self.inner = inner
        self.memory = memory

    def new_input(self, location: str) -> InputFile:
        data = self.memory.get(location)
        return _InMemory(location, data) if data is not None else self.inner.new_input(location)

    def new_output(self, location: str) -> OutputFile:
        out = self.inner.new_output(location)
        return _Remembering(out, self.memory) if _remembers(location) else out

    def delete(self, location: str | InputFile | OutputFile) -> None:
        self.memory.forget(location if isinstance(location, str) else location.location)
        self.inner.delete(location)


class _InMemory(InputFile):
    def __init__(self, location: str, data: bytes) -> None:
        super().__init__(location)
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def exists(self) -> bool:
        return True

    def open(self, seekable: bool = True) -> InputStream:
        return io.BytesIO(self._data)


class _Remembering(OutputFile):
    """An output file whose bytes are remembered once its stream closed without error."""

    def __init__(self, inner: OutputFile, memory: Remembered) -> None:
        super().__init__(inner.location)
        self._inner = inner
        self._memory = memory
        self._written: bytes | None = None

    def __len__(self) -> int:
        return len(self._written) if self._written is not None else len(self._inner)

    def exists(self) -> bool:
        return self._written is not None or self._inner.exists()

    def to_input_file(self) -> InputFile:
        return _InMemory(self.location, self._written) if self._written is not None else self._inner.to_input_file()

    def create(self, overwrite: bool = False) -> OutputStream:
        return _Tee(self._inner.create(overwrite=overwrite), self._closed)

    def _closed(self, data: bytes) -> None:
        self._written = data
        self._memory.put(self.location, data)


class _Tee(OutputStream):
    """Writes go to the real stream and to a buffer; the buffer is handed over once the real stream closed."""

    def __init__(self, stream: OutputStream, on_closed: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._buffer = io.BytesIO()
        self._on_closed = on_closed
        self._done = False

    def write(self, b: bytes) -> int:
        written = self._stream.write(b)
        self._buffer.write(b)
        return written

    def tell(self) -> int:
        return self._buffer.tell()

    def close(self) -> None:
        if self._done:
            return
        self._stream.close()  # raises when the upload failed: nothing is remembered then
        self._done = True
        self._on_closed(self._buffer.getvalue())

    def __enter__(self) -> _Tee:
        return self

    def __exit__(
        self, exctype: type[BaseException] | None, excinst: BaseException | None, exctb: TracebackType | None
    ) -> None:
        self.close()
