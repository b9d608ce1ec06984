"""`splitrl-bench train` on a tiny budget: a table and a JSON with one row per measurement."""

import json

from splitrl.bench.cli import main


def test_bench_train_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["train", "--env-counts", "4", "--seed-counts", "1,2", "--updates", "2", "--skip", "hppo,rejax,sb3",
          "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["num_envs"], r["num_seeds"]) for r in rows] == [(4, 1), (4, 2)]
    assert all(r["steps_per_s"] > 0 for r in rows)
    assert "steps/s" in capsys.readouterr().out
