"""Dask clusters on batch systems, from profiles that are data: ``<name>.yaml`` -> :func:`make_cluster`.

Profiles are looked up by name in ``./cluster``, then ``$XRDCT_CLUSTER_PROFILES``, then the ones
shipped in the package (``xrdct_dask/profiles/``: slurm-cpu, slurm-gpu, pbs, local-slurm).

A profile is dask-jobqueue's own configuration, one batch system per file::

    description: one line shown by `xrdct cluster list`
    jobqueue:
      slurm:                  # or pbs
        cores: 8              # dask threads per job (cores / processes per worker process)
        memory: 60GiB         # what the workers may use, in total per job
        ...                   # any key of dask-jobqueue's jobqueue.slurm / jobqueue.pbs section

``make_cluster("slurm-gpu", walltime="04:00:00")`` returns a (not yet scaled) ``SLURMCluster`` /
``PBSCluster``; overrides use the keyword spelling (``job_extra_directives=[...]``) and are
checked like the file's keys.  Site settings in the user's own ``~/.config/dask/jobqueue.yaml``
fill whatever the profile leaves out.  :func:`job_script` is the dry run (no scheduler started).

Three known traps are handled here, once, rather than in every profile:

* ``--mem`` vs ``--mem-per-gpu``/``--mem-per-cpu`` (dask-jobqueue #698): dask-jobqueue always
  writes ``#SBATCH --mem``; sbatch refuses it together with the per-GPU/per-CPU forms.  When a
  profile asks for memory per GPU or CPU, dask-jobqueue's ``--mem`` line is skipped.
* GB vs GiB (dask-jobqueue #252): dask reads ``64GB`` as 64e9 bytes, SLURM and PBS read ``64G``
  / ``64gb`` as 64 GiB.  The memory the workers may use (``memory``) is checked against what the
  batch system grants (``--mem``, ``--mem-per-gpu`` x GPUs, ``--mem-per-cpu`` x CPUs, PBS
  ``mem=``), both in bytes, so a job is never killed by the batch system before dask spills.
* GPU workers: a job with a GPU (``--gres=gpu:1``, ``--gpus=1``, PBS ``ngpus=1``) runs ONE worker
  process that owns the GPU (its CSR matrix and buffers live once on the device; its threads
  share it) and advertises ``--resources GPU=1``; the workflow's GPU stages ask for that resource.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dask
from dask.utils import parse_bytes
from distributed.deploy.local import nprocesses_nthreads

from xrdct_dask.config import WorkflowError, load_yaml_text, read_config_text
from xrdct_dask.errors import ProfileError
from xrdct_dask.resources import PROFILES_DIR


def _import_jobqueue():
    """``import dask_jobqueue``, keeping the process's Ctrl-C.  Its ``runner`` module (imported by
    ``dask_jobqueue/__init__``) sets SIGINT to ``sys.exit()`` when imported: a Ctrl-C then ends the
    process with exit status 0 and no message, as if the run had finished."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    # lazy: here, to put back the SIGINT handler its import replaces
    import dask_jobqueue

    if main and before is not None:
        signal.signal(signal.SIGINT, before)
    return dask_jobqueue


dask_jobqueue = _import_jobqueue()

log = logging.getLogger(__name__)


KINDS = ("slurm", "pbs")


#: keys dask-jobqueue still reads but has renamed: accepting them would only buy a FutureWarning
DEPRECATED_KEYS = {"extra": "worker-extra-args", "env-extra": "job-script-prologue",
                   "job-extra": "job-extra-directives", "header-skip": "job-directives-skip", "project": "account"}


#: keyword spellings that are not just the config key with '_' for '-'
KWARG_TO_KEY = {"job_name": "name"}


PLACEHOLDER_ADDRESS = "tcp://<scheduler-address>:8786"


_counter = itertools.count()




def profile_dirs() -> list[Path]:
    """Where profile names are looked up, first match wins: ``./cluster`` (this project's own),
    ``$XRDCT_CLUSTER_PROFILES`` (os.pathsep-separated folders: a site's), the shipped ``xrdct_dask/profiles/``."""
    env = [Path(p) for p in os.environ.get("XRDCT_CLUSTER_PROFILES", "").split(os.pathsep) if p]
    out = []
    for d in [Path.cwd() / "cluster", *env, PROFILES_DIR]:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def list_profiles() -> dict[str, Path]:
    """``{name: path}`` of every profile on the search path."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def profile_path(profile: str | Path) -> Path:
    """A profile's file: a path to a YAML file, or a name on :func:`profile_dirs`."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ProfileError(f"cluster profile {p} not found")
        return p
    found = list_profiles()
    if str(profile) not in found:
        names = ", ".join(found) or "none"
        raise ProfileError(f"cluster profile {profile!r} not found (known: {names}; or give a path to a .yaml file)")
    return found[str(profile)]


@dataclass(frozen=True)
class Profile:
    """A validated profile: ``options`` are dask-jobqueue config keys (``job-extra-directives``)."""

    name: str
    kind: str
    options: dict
    description: str = ""
    path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def cluster_class(self):

        return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[self.kind]


def _defaults(kind: str) -> dict:

    return dict(dask.config.get(f"jobqueue.{kind}"))


def _key_of(kwarg: str) -> str:
    return KWARG_TO_KEY.get(kwarg, kwarg.replace("_", "-"))


def _check_keys(options: dict, kind: str, where: str) -> None:
    known = _defaults(kind)
    for k in options:
        if k in DEPRECATED_KEYS:
            raise ProfileError(f"{where}.{k}: renamed in dask-jobqueue, use {DEPRECATED_KEYS[k]}")
        if k not in known:
            raise ProfileError(f"{where}.{k}: unknown key (dask-jobqueue's jobqueue.{kind} keys: "
                              f"{', '.join(sorted(set(known) - set(DEPRECATED_KEYS)))})")
    for k in ("job-extra-directives", "job-directives-skip", "worker-extra-args", "job-script-prologue"):
        v = options.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(s, (str, int, float)) for s in v)):
            raise ProfileError(f"{where}.{k}: must be a list of strings (got {v!r})")


def load_profile(profile: str | Path | dict, **overrides) -> Profile:
    """Read, check and complete a profile (see the module docstring); ``overrides`` win.

    ``profile`` is a name, a path, or the parsed mapping itself.
    """
    if isinstance(profile, dict):
        raw, path, name = profile, None, str(profile.get("name", "profile"))
    else:
        path = profile_path(profile)
        name = path.stem

        try:
            raw = load_yaml_text(read_config_text(path), str(path))
        except WorkflowError as err:
            raise ProfileError(str(err)) from None
    src = str(path or name)
    if not isinstance(raw, dict) or not isinstance(raw.get("jobqueue"), dict):
        raise ProfileError(f"{src}: needs a 'jobqueue:' mapping with one of {', '.join(KINDS)}")
    extra = set(raw) - {"jobqueue", "description", "name"}
    if extra:
        raise ProfileError(f"{src}: {sorted(extra)[0]}: unknown top-level key (allowed: description, jobqueue)")
    kinds = list(raw["jobqueue"])
    if len(kinds) != 1 or kinds[0] not in KINDS:
        raise ProfileError(f"{src}: jobqueue must hold exactly one of {', '.join(KINDS)} "
                           f"(got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    options = dict(raw["jobqueue"][kind] or {})
    _check_keys(options, kind, f"{src}: jobqueue.{kind}")
    over = {_key_of(k): v for k, v in overrides.items()}
    _check_keys(over, kind, "override")
    options.update(over)
    options, notes = _complete(options, kind, src)
    return Profile(name=name, kind=kind, options=options, description=str(raw.get("description", "")), path=path,
                   notes=tuple(notes))


# ------------------------------------------------------------------------------------------
# what a job asks the batch system for, read from its header
# ------------------------------------------------------------------------------------------
_SLURM_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


_PBS_UNITS = {"b": 1, "w": 8, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40,
              "kw": 8 * 2**10, "mw": 8 * 2**20, "gw": 8 * 2**30, "tw": 8 * 2**40}


def slurm_bytes(text: str) -> int:
    """SLURM memory size in bytes: ``60G`` = 60 GiB, ``4000`` = 4000 MiB (SLURM's default unit)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text), re.I)
    if not m:
        raise ProfileError(f"SLURM memory {text!r}: expected a number with K, M, G or T (binary units)")
    return int(float(m.group(1)) * _SLURM_UNITS.get(m.group(2).upper(), 2**20))


def pbs_bytes(text: str) -> int:
    """PBS size in bytes: ``60gb`` = 60 GiB (PBS units are binary), bare numbers are bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?[bw]?)\s*", str(text), re.I)
    if not m:
        raise ProfileError(f"PBS memory {text!r}: expected a number with kb, mb, gb or tb")
    return int(m.group(1)) * _PBS_UNITS[(m.group(2) or "b").lower()]


def _directive(lines: list[str], *names: str) -> str | None:
    """Value of the last ``--name=value`` / ``--name value`` / ``-X value`` among directives."""
    val = None
    for line in lines:
        words = shlex.split(line.replace("#SBATCH", " ", 1)) if line.startswith("#SBATCH") else shlex.split(line)
        for i, w in enumerate(words):
            for n in names:
                if w.startswith(n + "="):
                    val = w.split("=", 1)[1]
                elif w == n and i + 1 < len(words):
                    val = words[i + 1]
    return val


def slurm_gpus(lines: list[str]) -> int:
    """GPUs per job from ``--gres=gpu[:type]:N`` / ``--gpus[-per-node]=[type:]N`` / ``-G N``."""
    gres = _directive(lines, "--gres")
    if gres:
        for item in gres.split(","):
            parts = item.split(":")
            if parts[0] == "gpu":
                return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    gpus = _directive(lines, "--gpus", "--gpus-per-node", "--gpus-per-task", "-G")
    if gpus:
        return int(gpus.split(":")[-1])
    return 0


def worker_resources(args: list) -> dict[str, float]:
    """``{"GPU": 1.0}`` from dask-worker arguments ``["--resources", "GPU=1 FOO=2"]``."""
    words = [str(a) for a in args]
    out: dict[str, float] = {}
    for i, w in enumerate(words):
        spec = w.split("=", 1)[1] if w.startswith("--resources=") else (words[i + 1] if w == "--resources" and
                                                                          i + 1 < len(words) else None)
        if spec:
            for item in re.split(r"[\s,]+", spec.strip()):
                if item:
                    k, _, v = item.partition("=")
                    out[k] = float(v)
    return out


def _complete(options: dict, kind: str, src: str) -> tuple[dict, list[str]]:
    """Fix what can be fixed (the #698 skip, the GPU resource) and refuse what cannot."""

    d = {**_defaults(kind), **options}
    notes: list[str] = []
    if d.get("cores") is None or d.get("memory") is None:
        raise ProfileError(f"{src}: jobqueue.{kind}: cores and memory are required (threads and memory per job)")
    extra = [str(s) for s in d.get("job-extra-directives") or []]
    skip = list(d.get("job-directives-skip") or [])
    wargs = list(d.get("worker-extra-args") or [])
    processes = d.get("processes")
    if kind == "slurm":
        per = [n for n in ("--mem-per-gpu", "--mem-per-cpu") if _directive(extra, n)]
        if _directive(extra, "--mem") and per:
            raise ProfileError(f"{src}: job-extra-directives asks for --mem and {per[0]}: sbatch refuses both")
        if per and "--mem" not in skip:
            skip.append("--mem")  # dask-jobqueue #698: its own --mem line clashes with the per-GPU/CPU form
            notes.append(f"{per[0]} given: dask-jobqueue's --mem line skipped (dask-jobqueue #698)")
        gpus = slurm_gpus(extra)
    else:
        spec = d.get("resource-spec") or ""
        m = re.search(r"ngpus=(\d+)", spec)
        gpus = int(m.group(1)) if m else 0
    res = worker_resources(wargs)
    fixed: dict = {}
    if gpus and processes is None:
        processes = fixed["processes"] = 1  # not dask-jobqueue's default of ~sqrt(cores) processes
        notes.append("GPU job: processes set to 1")
    elif processes is None:

        processes, _ = nprocesses_nthreads(d["cores"])  # what dask-jobqueue will choose
    if gpus:
        if gpus != 1 or processes != 1:
            raise ProfileError(f"{src}: a GPU job runs one worker process that owns one GPU (got {gpus} GPU(s), "
                               f"processes: {processes}): ask for 1 GPU per job and scale with more jobs")
        if "GPU" not in res:
            wargs += ["--resources", "GPU=1"]
            notes.append("workers advertise --resources GPU=1")
        elif res["GPU"] != 1:
            raise ProfileError(f"{src}: worker-extra-args advertise GPU={res['GPU']:g} but each job has 1 GPU")
    elif res.get("GPU"):
        raise ProfileError(f"{src}: workers advertise GPU={res['GPU']:g} but the job asks the batch system for no GPU")
    out = {**options, **fixed, "job-directives-skip": skip, "worker-extra-args": wargs}
    # GB vs GiB (dask-jobqueue #252): what the workers may use must fit in what the job is granted
    use = parse_bytes(str(d["memory"]).replace(" ", ""))
    grant, how = _granted(d, kind, extra, gpus, skip)
    if grant is not None and use > grant:
        raise ProfileError(f"{src}: the workers may use {use / 2**30:.2f} GiB (memory: {d['memory']}) but the job is "
                           f"granted {grant / 2**30:.2f} GiB ({how}); lower memory or raise the grant "
                           f"(batch systems count G as GiB, dask counts GB as 1e9 bytes: dask-jobqueue #252)")
    return out, notes


def _granted(d: dict, kind: str, extra: list[str], gpus: int, skip: list) -> tuple[int | None, str]:

    if kind == "slurm":
        if v := _directive(extra, "--mem-per-gpu"):
            return slurm_bytes(v) * max(gpus, 1), f"--mem-per-gpu={v} x {max(gpus, 1)} GPU"
        if v := _directive(extra, "--mem-per-cpu"):
            cpus = d.get("job-cpu") or d["cores"]
            return slurm_bytes(v) * cpus, f"--mem-per-cpu={v} x {cpus} CPUs"
        if v := _directive(extra, "--mem"):
            return slurm_bytes(v), f"--mem={v}"
        if "--mem" in skip:
            return None, "no memory directive"
        if d.get("job-mem"):
            return slurm_bytes(d["job-mem"]), f"--mem={d['job-mem']}"
        # dask-jobqueue writes the ceiling in GiB/MiB of `memory` itself: always enough
        return parse_bytes(str(d["memory"]).replace(" ", "")), "--mem from memory"
    m = re.search(r"mem=(\w+)", d.get("resource-spec") or "")
    if m:
        return pbs_bytes(m.group(1)), f"resource-spec mem={m.group(1)}"
    return None, "no memory directive"


def job_resources(p: Profile) -> tuple[int, int]:
    """``(cores, GPUs)`` one job of a validated profile asks for (site settings filling what the
    profile leaves out), as :func:`_complete` reads them."""
    d = {**_defaults(p.kind), **p.options}
    if p.kind == "slurm":
        gpus = slurm_gpus([str(x) for x in d.get("job-extra-directives") or []])
    else:
        m = re.search(r"ngpus=(\d+)", d.get("resource-spec") or "")
        gpus = int(m.group(1)) if m else 0
    return int(d["cores"]), gpus


# ------------------------------------------------------------------------------------------
# clusters and job scripts
# ------------------------------------------------------------------------------------------
def _register(p: Profile) -> str:
    """Put the profile into dask.config under a fresh section name and return that name.

    dask-jobqueue reads its config again whenever it creates a job (every scale-up), so the
    section must stay valid for the cluster's whole life and must not be shared with another
    make_cluster call that had other overrides.
    """

    section = f"xrdct-{re.sub(r'[^A-Za-z0-9_-]', '-', p.name)}-{next(_counter)}"
    dask.config.set({f"jobqueue.{section}": {**_defaults(p.kind), **p.options}})
    return section


def job_class(kind: str):

    return {"slurm": dask_jobqueue.slurm.SLURMJob, "pbs": dask_jobqueue.pbs.PBSJob}[kind]


def job_script(profile: str | Path | dict, **overrides) -> str:
    """The job script a worker job would be submitted with (the dry run; starts nothing)."""
    p = load_profile(profile, **overrides)
    job = job_class(p.kind)(PLACEHOLDER_ADDRESS, name="dummy-name", config_name=_register(p))
    return job.job_script()


def make_cluster(profile: str | Path | dict, **overrides):
    """A dask-jobqueue cluster (scheduler started here, no jobs yet) from a profile.

    Scale it with ``cluster.scale(jobs=N)`` or ``cluster.adapt(maximum_jobs=N)``; close it (or
    use it as a context manager) to cancel the jobs.
    """
    p = load_profile(profile, **overrides)
    for n in p.notes:
        log.info("cluster profile %s: %s", p.name, n)
    cluster = p.cluster_class(config_name=_register(p))
    cluster.xrdct_profile = p  # what the workers will advertise, for the workflow (see declared_resources)
    log.info("cluster profile %s (%s): %s", p.name, p.kind, describe(cluster))
    return cluster


def declared_resources(cluster) -> dict[str, float] | None:
    """The resources the workers of a dask-jobqueue cluster will advertise (None: not such a cluster)."""
    job = getattr(cluster, "_dummy_job", None)
    if job is None:
        return None
    return worker_resources(shlex.split(job._command_template))


def describe(cluster) -> str:
    """One line: what one job is (processes, threads, memory, resources)."""
    job = getattr(cluster, "_dummy_job", None)
    if job is None:
        return type(cluster).__name__
    res = declared_resources(cluster)
    txt = (f"{job.worker_processes} worker process(es) per job x {job.worker_process_threads} thread(s), "
           f"{job.worker_process_memory} each")
    return txt + (", resources " + ", ".join(f"{k}={v:g}" for k, v in res.items()) if res else "")
