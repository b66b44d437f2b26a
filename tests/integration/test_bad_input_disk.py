"""Bad input from the disk's side: a spool below its watermark, a full filesystem, no inodes left.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from sidecar.dicom.status import StoreStatus
from tests.helpers.bad_input import (
    BAD_INPUT_MARKS,
    Service,
    _assert_refused,
    _config_for,
    module_service,
)
from tests.helpers.dicom_factory import make_mr
from tests.helpers.sidecar import running_sidecar

pytestmark = BAD_INPUT_MARKS


service = module_service("bad-input-disk")


# -- a full disk ------------------------------------------------------------------------------


@contextmanager
def _service_on(config: Path, root: Path) -> Iterator[Service]:
    with running_sidecar(config) as app:
        yield Service(app, root)


def _tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (unmounted afterwards); skipped where mounting is not permitted."""
    yield from _tmpfs(tmp_path / "small", "size=1m,mode=0700")


@pytest.fixture
def few_inodes_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for bytes but only 32 inodes (unmounted afterwards)."""
    yield from _tmpfs(tmp_path / "inodes", "size=4m,nr_inodes=32,mode=0700")


def _spool_on(folder: Path, data_dir: Path, **limits: int) -> Path:
    """A config whose spool lives on `data_dir` and whose journal does not."""
    cfg = _config_for(folder, **limits)
    svc = yaml.safe_load((cfg / "sidecar.yaml").read_text())
    svc["data_dir"] = str(data_dir)
    svc["journal_url"] = f"sqlite:///{folder / 'journal.sqlite'}"
    (cfg / "sidecar.yaml").write_text(yaml.safe_dump(svc))
    return cfg


class TestFullDisk:
    """A spool that cannot take an instance answers 'out of resources' (A700) and keeps serving."""

    def test_spool_below_its_free_space_watermark_is_out_of_resources(self, tmp_path: Path) -> None:
        """With limits.min_free_disk_bytes above the free space, C-STORE gets A700; C-ECHO still works."""
        cfg = _config_for(tmp_path / "conf", min_free_disk_bytes=1 << 62)
        with _service_on(cfg, tmp_path) as svc:
            ds = make_mr(seed=51)
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
                assert assoc.send_c_echo().Status == 0x0000
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "watermark")
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            assert svc.spooled_files() == set()
        # pynetdicom unlinks the data set file's name after the handler; the refused instance's
        # sink once carried the name /dev/null, which then vanished for every later process
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode), f"{os.devnull} is no longer a character device"

    def test_full_small_filesystem_is_out_of_resources_until_space_is_freed(
        self, tmp_path: Path, small_tmpfs: Path,
    ) -> None:
        """On a full 1 MiB tmpfs a store gets A700; acknowledged files stay; after freeing space stores succeed."""
        cfg = _spool_on(tmp_path / "conf", small_tmpfs / "var")
        with _service_on(cfg, tmp_path) as svc:
            svc.store_good()
            filler = small_tmpfs / "filler"
            free = shutil.disk_usage(small_tmpfs).free
            filler.write_bytes(b"\x00" * (free - 8 * 1024))
            ds = make_mr(seed=52, size=128)  # ~33 KB: more than is left
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES)
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            assert not list(svc.spool.rglob(".incoming-*"))
            svc.assert_nothing_lost()
            filler.unlink()
            svc.assert_still_serving()

    def test_filesystem_out_of_inodes_is_out_of_resources_until_freed(
        self, tmp_path: Path, few_inodes_tmpfs: Path,
    ) -> None:
        """When the OS itself says ENOSPC (no inodes left), the store gets A700 naming it, then recovers."""
        cfg = _spool_on(tmp_path / "conf", few_inodes_tmpfs / "var")
        with _service_on(cfg, tmp_path) as svc:
            svc.store_good()
            fillers = []
            for i in range(64):
                try:
                    (few_inodes_tmpfs / f"filler-{i}").touch()
                except OSError:
                    break
                fillers.append(few_inodes_tmpfs / f"filler-{i}")
            else:
                pytest.fail("the tmpfs never ran out of inodes")
            ds = make_mr(seed=53)
            with svc.mr_association() as assoc:
                status = assoc.send_c_store(ds)
            _assert_refused(status, StoreStatus.REFUSED_OUT_OF_RESOURCES, "No space left on device")
            assert not svc.app.journal.has_instance(str(ds.SOPInstanceUID))
            svc.assert_nothing_lost()
            for f in fillers:
                f.unlink()
            svc.assert_still_serving()


