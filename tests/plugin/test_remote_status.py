"""The Jobs dock's line for a remote job, from `remote status --events`' result fields."""

from tower_detector_plugin.core.jobs import remote_status_message


def test_the_jobs_dock_tells_eta_cost_waiting_and_failures_of_a_remote_job():
    result = {"status": "PENDING", "waiting": {"jobs": 3, "reason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - "
                                                                     "Service cannot fulfill the capacity requested"},
              "rate": {"eta_seconds": 7345.2, "tiles_left": 33, "workers_running": 1},
              "cost": {"worker_hours": 1.9167, "dollars": 0.96, "spot_price": 0.5, "estimate": True},
              "failures": {"children": {"no_gpu": 1, "other": 1}, "attempts": {"spot_reclaim": 4}}}
    assert remote_status_message(result) == (
        "remote: PENDING; 3 waiting for capacity (CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY); ETA about 2.0 h with 1 "
        "running; about $0.96 so far (estimate); 2 failed for good: remote retry once it ends")
    # a job that has not started: the state alone
    assert remote_status_message({"status": "RUNNABLE", "rate": {"eta_seconds": None, "tiles_left": 64},
                                  "cost": {"worker_hours": 0, "dollars": 0}}) == "remote: RUNNABLE"
    # the result of a backend from before these fields
    assert remote_status_message({"status": "RUNNING"}) == "remote: RUNNING"
