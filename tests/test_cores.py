import worker_tasks

from mixphm.experiments.cores import CoreShare, threads_per_worker
from mixphm.experiments.workers import map_in_workers


def test_a_lone_run_gets_every_core_and_a_pool_shares_them():
    assert threads_per_worker(cores=2, processes=1) == 2
    assert threads_per_worker(cores=16, processes=3) == 5
    assert threads_per_worker(cores=1, processes=2) == 1


def test_the_last_runs_take_the_cores_of_the_workers_left_idle():
    share = CoreShare.create(cores=8, workers=3, runs=5)
    threads = []
    for _ in range(5):
        threads.append(share.threads())
        share.finished_one()
    # while three or more runs are left, all three workers train (8 // 3 cores each); then
    # the last two share the 8 cores, and the last one has them all
    assert threads == [2, 2, 2, 4, 8]


def test_a_worker_takes_its_partners_cores_when_the_partner_has_finished():
    share = CoreShare.create(cores=4, workers=2, runs=2)
    threads = map_in_workers(
        worker_tasks.threads_at_the_end, ["quick", "slow"], 2, worker_tasks.take_share, (share,)
    )
    assert sorted(threads) == [2, 4]
    assert share.unfinished.value == 1  # counted in the workers' memory, seen here
