"""Test helper, run as a child process by test_uploader.py: uploads one file with a SQLite journal and,
once STOP_AFTER parts are journalled, says so on stdout and hangs, waiting for the parent's kill -9.

Arguments: ENDPOINT BUCKET KEY PATH JOURNAL_DB STOP_AFTER PART_SIZE. Keys come in the environment
(LIPSYNCD_TEST_ACCESS_KEY / LIPSYNCD_TEST_SECRET_KEY), never on the command line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from daemon.distribute.s3 import Credentials, StorageSettings, make_client
from daemon.distribute.uploader import SqliteJournal, UploadSettings, upload_file


class HangingJournal(SqliteJournal):
    def __init__(self, path: Path, stop_after: int) -> None:
        super().__init__(path)
        self.stop_after, self.count = stop_after, 0

    def part_done(self, key: str, part_number: int, etag: str, size: int, checksum: str) -> None:
        super().part_done(key, part_number, etag, size, checksum)
        self.count += 1
        if self.count >= self.stop_after:
            print(f"JOURNALLED {self.count}", flush=True)
            time.sleep(3600)  # the parent kills us here


def main(argv: list[str]) -> None:
    endpoint, bucket, key, path, journal_db, stop_after, part_size = argv
    credentials = Credentials(os.environ["LIPSYNCD_TEST_ACCESS_KEY"], os.environ["LIPSYNCD_TEST_SECRET_KEY"])
    client = make_client(StorageSettings(endpoint_url=endpoint, bucket=bucket), credentials)
    settings = UploadSettings(
        multipart_threshold=int(part_size), part_size=int(part_size), max_part_workers=1
    )
    upload_file(client, bucket, key, Path(path), HangingJournal(Path(journal_db), int(stop_after)), settings)
    print("COMPLETED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
