"""PACL heads on the Hugging Face Hub: `hf-hub:ORG/REPO[@REVISION][:FILE]` specs, downloads and uploads.

A head on the Hub is the same pair as on disk, FILE (default head.safetensors) and FILE's .json, in a model
repository; `fetch_head` downloads both with huggingface_hub into its usual cache (HF_HOME), so a second use,
or an offline one (HF_HUB_OFFLINE=1), reads the cached copy. `push_folder` creates the repository and uploads a
prepared folder with huggingface_hub's own authentication (HF_TOKEN or `hf auth login`); no token passes
through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import _CACHED_NO_EXIST, HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pacl_core.errors import PACLError

HUB_PREFIX = "hf-hub:"
DEFAULT_FILE = "head.safetensors"
_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HubHead:
    """Where a head lives on the Hub: repository, revision (None = main) and file in it."""

    repo: str
    revision: str | None = None
    filename: str = DEFAULT_FILE

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        file = f":{self.filename}" if self.filename != DEFAULT_FILE else ""
        return f"{HUB_PREFIX}{self.repo}{rev}{file}"


def is_hub_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def check_repo_id(repo: str, what: str = "repository") -> str:
    """ORG/REPO as the Hub spells it, or a one-line PACLError."""
    if not _REPO_RE.fullmatch(repo or "") or ".." in repo or repo.endswith((".", "-")):
        raise PACLError(f"'{repo}' is not a Hub {what} name; write ORG/REPO, e.g. my-org/pacl-vit-b-16")
    return repo


def parse_hub_spec(spec: str) -> HubHead:
    """'hf-hub:ORG/REPO[@REVISION][:FILE]' -> HubHead; a malformed spec is a one-line PACLError."""
    if not is_hub_spec(spec):
        raise PACLError(f"'{spec}' is not a Hub head; write hf-hub:ORG/REPO[@REVISION][:FILE]")
    body = spec[len(HUB_PREFIX):]
    where, _, filename = body.partition(":")
    repo, at, revision = where.partition("@")
    form = f"'{spec}' is not a valid Hub head spec; write hf-hub:ORG/REPO[@REVISION][:FILE]"
    if not _REPO_RE.fullmatch(repo) or (at and not revision) or (":" in body and not filename):
        raise PACLError(form)
    filename = filename or DEFAULT_FILE
    if not filename.endswith(".safetensors") or filename.startswith("/") or ".." in filename.split("/"):
        raise PACLError(f"{form} (FILE must be a .safetensors path inside the repository)")
    return HubHead(check_repo_id(repo), revision or None, filename)


def _cached_absent(head: HubHead, filename: str) -> bool:
    """Whether the cache records that the Hub said this file does not exist in this revision."""
    return try_to_load_from_cache(head.repo, filename, revision=head.revision) is _CACHED_NO_EXIST


def _download(head: HubHead, filename: str) -> Path:
    """One file of the repository through huggingface_hub's cache; Hub failures become one-line PACLErrors."""
    missing = (f"{head}: the repository has no {filename}, so it holds no PACL head there "
               f"(a head is NAME.safetensors + NAME.json; name another file with hf-hub:{head.repo}:FILE)")
    try:
        return Path(hf_hub_download(head.repo, filename, revision=head.revision, library_name="pacl_core"))
    except LocalEntryNotFoundError:
        if _cached_absent(head, filename):
            raise PACLError(missing) from None
        raise PACLError(f"{head}: could not be fetched from the Hugging Face Hub (offline, HF_HUB_OFFLINE set, or "
                        "the Hub unreachable) and no copy is in the local cache; connect once to cache it") from None
    except GatedRepoError:
        raise PACLError(f"{head}: the repository is gated; accept its terms on the Hub and log in "
                        "(hf auth login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise PACLError(f"{head}: no such repository on the Hub (or it is private: log in with hf auth login or "
                        "HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise PACLError(f"{head}: the repository has no revision '{head.revision}'") from None
    except EntryNotFoundError:
        raise PACLError(missing) from None
    except HfHubHTTPError as e:
        raise PACLError(f"{head}: could not be fetched from the Hub ({type(e).__name__})") from None


def fetch_head(spec: str) -> Path:
    """Download (or find in the cache) a Hub head's .safetensors and .json; returns the local .safetensors path,
    with its .json beside it (both in the same cached snapshot)."""
    head = parse_hub_spec(spec)
    tensors = _download(head, head.filename)
    meta = _download(head, str(Path(head.filename).with_suffix(".json")))
    if tensors.with_suffix(".json") != meta:  # a branch moved between the two downloads
        raise PACLError(f"{head}: the revision changed while downloading; try again or pin @REVISION")
    return tensors


def resolve_head_path(head) -> Path:
    """A local path or an hf-hub: spec -> a local head path (downloaded when it is on the Hub)."""
    return fetch_head(head) if is_hub_spec(head) else Path(head)


def push_folder(folder: Path, repo: str, private: bool = False, message: str = "Upload PACL head") -> str:
    """Create the model repository (if it does not exist) and upload `folder`; returns the commit URL."""
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message, repo_type="model")
    except LocalTokenNotFoundError:
        raise PACLError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = {401: "not authorised: log in with `hf auth login` or set HF_TOKEN",
               403: "this token may not write to that repository"}.get(status, type(e).__name__)
        raise PACLError(f"could not upload to {repo}: {why}") from None
    except OSError as e:  # no network at all
        raise PACLError(f"could not upload to {repo}: the Hub is unreachable ({type(e).__name__})") from None
    return str(getattr(info, "commit_url", info))
