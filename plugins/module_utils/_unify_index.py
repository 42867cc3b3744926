# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: unify's persistent index (floor 2, a mechanism: an sqlite3 store).

``CONFIG_DIR/.unify-index``: one row per inode (dev, ino, size, mtime_ns, ctime_ns, sha256, xattr digest,
flags we set, last seen). A row is *fresh* for an inode whose size, mtime and ctime are unchanged: its hash
and xattr digest can then be trusted without reading the file again.

Imports only floor 1 (_common).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Dict, Iterable, NamedTuple, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

INDEX_NAME = '.unify-index'
INDEX_VERSION = 1
ALGO = 'sha256'
OURS_IMMUTABLE = 1  # flags: we set the immutable flag on this inode
FLAGS_KNOWN = 2  # the flags below were read at this ctime
FLAGS_IMMUTABLE = 4  # the inode is immutable (ours or not)
REFRESH_SECONDS = 30 * 86400  # an unchanged row's 'seen' is rewritten at most this often
FORGET_SECONDS = 180 * 86400  # rows unseen this long are dropped

_COLUMNS = 'dev, ino, size, mtime, ctime, hash, xattr, flags, seen'


class IndexRow(NamedTuple):
    """One inode as the index knows it. ``flags``: OURS_IMMUTABLE | FLAGS_KNOWN | FLAGS_IMMUTABLE, or None.
    ``seen``: when the row was last written (None for a row not written yet)."""
    dev: int
    ino: int
    size: int
    mtime: int
    ctime: int
    hash: Optional[bytes]
    xattr: Optional[bytes]
    flags: Optional[int]
    seen: Optional[int] = None

    def same_content(self, other: 'IndexRow') -> bool:
        """Everything but 'seen' equal (nothing to write)."""
        return self[:8] == other[:8]


def _version():
    return '%d:%s' % (INDEX_VERSION, ALGO)


class Index:
    """Per-host cache: (dev, ino) -> IndexRow."""

    def __init__(self, path: str):
        self.path = path
        self.rows: Dict[Tuple[int, int], IndexRow] = {}
        self.conn = None

    def load(self, devs: Iterable[int]) -> None:
        """Read the rows of the given devices (read-only; a missing or unusable index is just empty)."""
        devs = sorted(devs)
        if not devs or not os.path.exists(self.path):
            return
        try:
            conn = sqlite3.connect('file:%s?mode=ro' % self.path, uri=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
                if row is None or row[0] != _version():
                    return
                query = 'SELECT %s FROM inode WHERE dev IN (%s)' % (_COLUMNS, ','.join('?' * len(devs)))
                for row in conn.execute(query, devs):
                    self.rows[(row[0], row[1])] = IndexRow(*row)
            finally:
                conn.close()
        except sqlite3.Error:
            self.rows = {}

    def _open(self):
        if self.conn is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            self.conn = sqlite3.connect(self.path)
            self.conn.execute('PRAGMA synchronous=NORMAL')
            self.conn.execute('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)')
            self.conn.execute('CREATE TABLE IF NOT EXISTS inode (dev INTEGER, ino INTEGER, size INTEGER, '
                              'mtime INTEGER, ctime INTEGER, hash BLOB, xattr BLOB, flags INTEGER, seen INTEGER, '
                              'PRIMARY KEY (dev, ino)) WITHOUT ROWID')
            row = self.conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None or row[0] != _version():
                self.conn.execute('DELETE FROM inode')
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_version(),))
            self.conn.commit()
        except sqlite3.Error as exc:
            raise VServerError('unify index %s is unusable (%s); remove it, the next run rebuilds it'
                               % (self.path, exc))

    def fresh(self, node) -> Optional[IndexRow]:
        """The row of ``node`` (anything with dev, ino, size, mtime, ctime) if its file is unchanged since."""
        row = self.rows.get((node.dev, node.ino))
        if row and row.size == node.size and row.mtime == node.mtime and row.ctime == node.ctime:
            return row
        return None

    def save(self, rows: Iterable[IndexRow], drop: Iterable[Tuple[int, int]]) -> None:
        """Write the rows that changed (and refresh 'seen' monthly); forget rows unseen for 180 days."""
        now = int(time.time())
        write = []
        for row in rows:
            old = self.rows.get((row.dev, row.ino))
            if old is None or not old.same_content(row) or (old.seen or 0) < now - REFRESH_SECONDS:
                write.append(row._replace(seen=now))
        self._open()
        with self.conn:
            if drop:
                self.conn.executemany('DELETE FROM inode WHERE dev=? AND ino=?', list(drop))
            self.conn.executemany('INSERT OR REPLACE INTO inode VALUES (?,?,?,?,?,?,?,?,?)', write)
            self.conn.execute('DELETE FROM inode WHERE seen < ?', (now - FORGET_SECONDS,))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
