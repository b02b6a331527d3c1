"""How many workers can really run at once, and what a worker-hour costs.

A worker is one Batch job (one child of an array job): one GPU and the job definition's vCPUs. EC2 counts spot
quota in vCPUs of whole instances, so a worker on an 8-vCPU single-GPU size (g4dn.2xlarge) takes 8 vCPUs of quota
and of the compute environment's maxvCpus, not the 4 the job asks for. The default mix has such sizes, and Batch
may pick them, so the count assumes the mix's largest share of vCPUs per worker (the worst case).

Prices per instance type come from EC2's spot price history when the credentials may read it, else from the
assumptions below (docs/aws.md says where they come from).

size_shards: the shard count of a prediction from its rate, the attempt timeout and the workers at once.
"""

import math
import statistics

# Service Quotas codes of the spot vCPU quotas per instance family letter (EC2 counts spot vCPUs per family group)
SPOT_QUOTAS = {"g": ("L-3819A6DF", "All G and VT Spot Instance Requests"),
               "p": ("L-7212CCBC", "All P Spot Instance Requests")}
# (vCPUs, GPUs) of the usual single-node GPU sizes, for when describe_instance_types is not allowed
INSTANCE_SPECS = {"g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1), "g4dn.4xlarge": (16, 1), "g4dn.8xlarge": (32, 1),
                  "g4dn.12xlarge": (48, 4), "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.4xlarge": (16, 1),
                  "g5.8xlarge": (32, 1), "g5.12xlarge": (48, 4), "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1),
                  "p3.2xlarge": (8, 1)}
# $ per instance-hour on spot when the price history cannot be read: assumptions (typical us-east-1 spot prices,
# docs/aws.md); a type not listed takes DEFAULT_SPOT_PRICE per GPU
DEFAULT_SPOT_PRICES = {"g4dn.xlarge": 0.20, "g4dn.2xlarge": 0.28, "g5.xlarge": 0.40, "g5.2xlarge": 0.48,
                       "g6.xlarge": 0.35, "g6.2xlarge": 0.42}
DEFAULT_SPOT_PRICE = 0.20


SHARD_SHARE = 0.5  # a shard, start-up included, takes at most this share of the attempt timeout
MIN_SHARD_HOURS = 0.5  # a shard scoring less than this is not worth a worker (and a start-up) of its own


def size_shards(tiles, tiles_per_second, *, timeout_hours, workers, startup_minutes, views=1, max_shards=10_000,
                columns=None):
    """The shards of a prediction whose --shards is not given. Pure arithmetic:

    1. time:    enough shards that each, start-up included, ends within SHARD_SHARE of the attempt timeout:
                n_time = ceil(scoring hours / (SHARD_SHARE x timeout_hours - start-up hours))
    2. fleet:   a shard per worker at once when the work fills them, each still scoring MIN_SHARD_HOURS or more:
                n_fleet = max(1, min(workers, floor(scoring hours / MIN_SHARD_HOURS)))
    3. rounds:  n = max(n_time, n_fleet), rounded up to a multiple of `workers` once it reaches them, so that
                every round of shards fills the workers (none left mostly idle)
    4. limits:  at most max_shards (Batch's array size) and `columns` (shards are tile-column ranges), kept a
                multiple of `workers` where one fits; 1 is a single job, not an array.
    scoring hours = tiles x views / tiles_per_second / 3600. Returns {"shards", "shard_hours" (each, start-up
    included), "limit_hours" (SHARD_SHARE x timeout), "fits" (shard_hours <= limit_hours), "by" ("time", "workers"
    or "one")}. UserError when the timeout leaves no time to score after the start-up.

    E.g. 50 M tiles at 150 tiles/s, 24 h, 8 workers, 5 min start-up: 92.6 h of scoring over 12 - 1/12 h a shard
    is 7.8 -> 8 shards (a multiple of 8) of 11.66 h; at 20 tiles/s, 694 h -> 59 -> 64 shards of 10.93 h.
    """
    from ..common.errors import UserError

    workers = max(1, int(workers))
    limit = SHARD_SHARE * timeout_hours
    budget = limit - startup_minutes / 60
    if budget <= 0:
        raise UserError(f"an attempt timeout of {timeout_hours:g} h leaves no time to score after the "
                        f"{startup_minutes:g} min start-up of a shard: give a longer --timeout-hours")
    hours = tiles * views / tiles_per_second / 3600
    n_time = max(1, math.ceil(hours / budget))
    n_fleet = max(1, min(workers, math.floor(hours / MIN_SHARD_HOURS)))
    n = max(n_time, n_fleet)
    if n >= workers:
        n = math.ceil(n / workers) * workers
    cap = min(max_shards, columns or max_shards)
    if n > cap:
        n = cap // workers * workers if cap >= workers else cap
    n = max(1, n)
    shard_hours = hours / n + startup_minutes / 60
    by = "one" if n == 1 else "time" if n_time >= n_fleet else "workers"
    return {"shards": n, "shard_hours": round(shard_hours, 3), "limit_hours": round(limit, 3),
            "fits": shard_hours <= limit + 1e-9, "by": by}


def workers_per_instance(vcpus, gpus, job_vcpus):
    """Workers one instance holds: one a GPU, as many as its vCPUs allow."""
    return max(0, min(gpus, vcpus // max(1, job_vcpus)))


def workers_at_once(specs, job_vcpus, max_vcpus, quotas=None):
    """The workers that can run at once. specs: {instance type: (vCPUs, GPUs)}; quotas: {family letter: spot vCPU
    quota} (a family without a known quota is not limited by it). Pure arithmetic, see the module docstring."""
    fit = {t: (v, g) for t, (v, g) in specs.items() if workers_per_instance(v, g, job_vcpus)}
    if not fit:
        return {"workers": 0, "workers_quota": None, "workers_ce": 0, "limited_by": "instance types",
                "vcpus_per_worker": None, "worst_type": None, "max_vcpus": max_vcpus, "quota_vcpus": None,
                "quota_codes": []}
    share = {t: v / workers_per_instance(v, g, job_vcpus) for t, (v, g) in fit.items()}  # vCPUs a worker holds
    worst = max(share, key=lambda t: (share[t], t))
    workers_ce = int(max_vcpus // share[worst])
    workers_quota, quota_vcpus = None, None
    quotas = quotas or {}
    families = {t[:1].lower() for t in fit}
    if families and all(f in quotas for f in families):
        quota_vcpus = sum(quotas[f] for f in families)
        workers_quota = 0
        for f in families:
            in_family = [t for t in fit if t[:1].lower() == f]
            smallest = min(fit[t][0] for t in in_family)  # a quota below one instance starts nothing of it
            if quotas[f] >= smallest:
                workers_quota += int(quotas[f] // max(share[t] for t in in_family))
    workers = workers_ce if workers_quota is None else min(workers_ce, workers_quota)
    return {"workers": workers, "workers_quota": workers_quota, "workers_ce": workers_ce,
            "limited_by": "quota" if workers_quota is not None and workers_quota < workers_ce else
            "compute environment", "vcpus_per_worker": share[worst], "worst_type": worst, "max_vcpus": max_vcpus,
            "quota_vcpus": quota_vcpus,
            "quota_codes": [SPOT_QUOTAS[f][0] for f in sorted(families) if f in SPOT_QUOTAS]}


def worker_price(specs, prices, job_vcpus):
    """($ per worker-hour, its instance type): the dearest worker of the mix, so the cost is not under-stated."""
    per_worker = {t: prices[t] / workers_per_instance(v, g, job_vcpus) for t, (v, g) in specs.items()
                  if t in prices and workers_per_instance(v, g, job_vcpus)}
    if not per_worker:
        return DEFAULT_SPOT_PRICE, None
    dearest = max(per_worker, key=lambda t: (per_worker[t], t))
    return per_worker[dearest], dearest


def capacity_text(c):
    """One or two lines on the workers at once, saying plainly when the quota sets the time."""
    if not c["workers"]:
        return "workers:  none can run: no instance type of the compute environment has a GPU for a job"
    share = f"{c['vcpus_per_worker']:g} vCPUs a worker ({c['worst_type']}, the largest share of the mix)"
    if c["limited_by"] == "quota":
        need = int(c["workers_ce"] * c["vcpus_per_worker"])
        return (f"workers:  {c['workers']} at once: your spot quota of {c['quota_vcpus']:g} vCPUs / {share}\n"
                f"  the quota, not the budget, sets the time: the compute environment's {c['max_vcpus']} vCPUs "
                f"(setup --max-vcpus) would run {c['workers_ce']}; ask for a spot quota of {need} vCPUs "
                f"(Service Quotas, EC2, {', '.join(c['quota_codes'])})")
    quota = "" if c["quota_vcpus"] is None else f"; your spot quota of {c['quota_vcpus']:g} vCPUs allows it"
    return f"workers:  {c['workers']} at once: the compute environment's {c['max_vcpus']} vCPUs / {share}{quota}"


# ---------------------------------------------------------------------------------------------
# what the account says (each may be refused; then the fallbacks above)
# ---------------------------------------------------------------------------------------------
def instance_specs(aws, types):
    from botocore.exceptions import BotoCoreError, ClientError

    specs = {t: INSTANCE_SPECS[t] for t in types if t in INSTANCE_SPECS}
    try:
        for info in aws.client("ec2").describe_instance_types(InstanceTypes=list(types))["InstanceTypes"]:
            gpus = sum(g.get("Count", 0) for g in (info.get("GpuInfo") or {}).get("Gpus", []))
            specs[info["InstanceType"]] = (int(info["VCpuInfo"]["DefaultVCpus"]), gpus)
    except (BotoCoreError, ClientError, KeyError):
        pass
    return specs


def spot_quotas(aws, types):
    """{family letter: spot vCPU quota} for the GPU families of the mix that Service Quotas answers for."""
    from botocore.exceptions import BotoCoreError, ClientError

    quotas = {}
    for letter in sorted({t[:1].lower() for t in types} & set(SPOT_QUOTAS)):
        try:
            quotas[letter] = aws.client("service-quotas").get_service_quota(
                ServiceCode="ec2", QuotaCode=SPOT_QUOTAS[letter][0])["Quota"]["Value"]
        except (BotoCoreError, ClientError, KeyError):
            continue
    return quotas


def spot_prices(aws, types):
    """({instance type: $ per hour}, source): the current spot price (median over the zones) from the price
    history, else the documented defaults."""
    import datetime

    from botocore.exceptions import BotoCoreError, ClientError

    found = {}
    try:
        history = aws.client("ec2").describe_spot_price_history(
            InstanceTypes=list(types), ProductDescriptions=["Linux/UNIX (Amazon VPC)", "Linux/UNIX"],
            StartTime=datetime.datetime.now(datetime.timezone.utc))["SpotPriceHistory"]
        for entry in history:
            found.setdefault(entry["InstanceType"], []).append(float(entry["SpotPrice"]))
    except (BotoCoreError, ClientError, KeyError, ValueError):
        found = {}
    if found and all(t in found for t in types):
        return {t: statistics.median(found[t]) for t in types}, "the spot price history"
    return {t: DEFAULT_SPOT_PRICES.get(t, DEFAULT_SPOT_PRICE * (INSTANCE_SPECS.get(t, (0, 1))[1] or 1))
            for t in types}, "assumed prices (docs/aws.md)"


def plan(aws, resources, job_vcpus, spot_price=None):
    """The capacity of a compute environment (its computeResources) for jobs of job_vcpus: workers at once,
    blocking problems, and $ per worker-hour (spot_price given: that)."""
    types = list(resources.get("instanceTypes") or [])
    specs = instance_specs(aws, types)
    quotas = spot_quotas(aws, types)
    max_vcpus = int(resources.get("maxvCpus") or job_vcpus)
    if specs:
        c = workers_at_once(specs, job_vcpus, max_vcpus, quotas)
    else:  # sizes unknown (instance families, or EC2 refused): a worker counted at the job's own vCPUs
        c = workers_at_once({"unknown sizes": (job_vcpus, 1)}, job_vcpus, max_vcpus)
    problems = []
    if not c["workers"] and c["limited_by"] == "instance types":
        problems.append(f"no instance type of the compute environment ({', '.join(types) or 'none'}) has a GPU and "
                        f"{job_vcpus} vCPUs for a job: run `tower-detector remote setup --instance-types ...`")
    for letter, value in sorted(quotas.items()):
        sizes = [v for t, (v, g) in specs.items() if t[:1].lower() == letter and workers_per_instance(v, g, job_vcpus)]
        if sizes and value < min(sizes):
            code, name = SPOT_QUOTAS[letter]
            problems.append(f"your spot quota '{name}' ({code}) is {value:g} vCPUs, below the {min(sizes)} of the "
                            f"smallest instance that runs a job: jobs would wait in RUNNABLE; ask for an increase "
                            f"(Service Quotas console, EC2, {code})")
    if spot_price is None:
        prices, source = spot_prices(aws, types)
        price, dearest = worker_price(specs, prices, job_vcpus)
        c.update(prices=prices, price_source=source, spot_price=price, price_type=dearest)
    else:
        c.update(prices=None, price_source="--spot-price", spot_price=spot_price, price_type=None)
    c["problems"] = problems
    return c
