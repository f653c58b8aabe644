"""The `jaxseq train` command every recipe runs, the gs:// paths it mounts for it, and the
checks that keep URLs off jaxseq's command line."""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from jaxseq.config import LOCAL_PATH_KEYS  # config keys opened as local paths

REPO = Path(__file__).resolve().parents[2]
# Where every TPU worker and GKE pod mounts a bucket: gs://BUCKET/PATH is MOUNT_ROOT/BUCKET/PATH.
MOUNT_ROOT = "/mnt/gcs"
# gcsfuse options of the workdir mount. An orbax checkpoint is committed by renaming its
# temporary directory; gcsfuse renames a directory object by object, and refuses one of more
# than rename-dir-limit objects (by default 0: every directory rename fails).
GCSFUSE_OPTIONS = ("implicit-dirs", "rename-dir-limit=200000")
_BUCKET = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")  # what a bucket name may hold


class LaunchError(ValueError):
    """A recipe parameter that cannot work (the message says which and why)."""


def _is_url(value: str) -> bool:
    return "://" in value


@dataclass(frozen=True)
class GcsPath:
    """gs://BUCKET/PATH, and where it appears once the bucket is mounted."""

    bucket: str
    path: str = ""  # inside the bucket, no leading or trailing "/"; "" = the bucket's root

    @classmethod
    def parse(cls, url: str, what: str) -> GcsPath:
        """Raises LaunchError (naming the option `what`) unless `url` is gs://BUCKET[/PATH]."""
        if not url.startswith("gs://"):
            raise LaunchError(f"{what} must be gs://BUCKET/PATH, got {url!r}")
        bucket, _, path = url.removeprefix("gs://").partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise LaunchError(f"{what}: {bucket!r} in {url!r} is not a bucket name")
        return cls(bucket, path.strip("/"))

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.path}".rstrip("/")

    def mount_point(self, root: str = MOUNT_ROOT) -> str:
        """Where the bucket is mounted."""
        return f"{root}/{self.bucket}"

    def mounted(self, root: str = MOUNT_ROOT) -> str:
        """The local path of gs://BUCKET/PATH under the bucket's mount point."""
        return f"{self.mount_point(root)}/{self.path}".rstrip("/")


@dataclass(frozen=True)
class TrainCommand:
    """`jaxseq train` exactly as every process runs it."""

    config: str
    workdir: str
    overrides: tuple[str, ...] = ()

    def argv(self, program: str = "jaxseq") -> list[str]:
        """The argument vector, `program` being the jaxseq executable."""
        return [
            program,
            "train",
            "--config",
            self.config,
            "--workdir",
            self.workdir,
            *self.overrides,
        ]

    def shell(self, program: str = "jaxseq") -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.argv(program))

    def with_dataset(self, path: str | None) -> TrainCommand:
        """The same command reading the prepared dataset at `path` (first, so that an explicit
        `data.dataset=` override still wins)."""
        if path is None:
            return self
        return dataclasses.replace(self, overrides=(f"data.dataset={path}", *self.overrides))

    def check_local(self, hint: str) -> TrainCommand:
        """Returns self; raises LaunchError when the config, the workdir or a path-valued
        override is a URL, which `jaxseq train` rejects (`hint` says what to pass instead)."""
        named = [("--config", self.config), ("--workdir", self.workdir)]
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.strip() in LOCAL_PATH_KEYS:
                named.append((key.strip(), value))
        for what, value in named:
            if _is_url(value):
                raise LaunchError(
                    f"{what} is {value!r}, but jaxseq reads and writes only local or mounted "
                    f"paths; {hint}"
                )
        return self


def mounted_workdir(train: TrainCommand, root: str = MOUNT_ROOT) -> tuple[GcsPath, TrainCommand]:
    """The workdir's bucket (from `--workdir gs://BUCKET/PATH`), and `train` with that workdir
    replaced by its mounted path, ROOT/BUCKET/PATH, every path in it checked to be local."""
    try:
        gcs = GcsPath.parse(train.workdir, "--workdir")
    except LaunchError as err:
        raise LaunchError(
            f"{err}: every host mounts the bucket at {root}/BUCKET and trains in {root}/BUCKET/PATH"
        ) from None
    train = dataclasses.replace(train, workdir=gcs.mounted(root))
    hint = "pass the workdir as --workdir gs://BUCKET/PATH and the dataset as --dataset gs://..."
    return gcs, train.check_local(hint)
