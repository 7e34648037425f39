"""One `<view>_serving` asset per declared count view, generated from the declarations; a views
file that does not load leaves the built-in views' assets and the code location loading, with
the error logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.lambda_arch.serving.views_lake import VIEWS_TOML

# The serving assets of the Definitions as the code location loads them: key, upstream keys.
PROBE = """
import json, warnings
warnings.simplefilter("ignore")
from lambda_arch.definitions import defs
graph = defs.resolve_asset_graph()
print(json.dumps({
    key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
    for key in graph.get_all_asset_keys() if key.to_user_string().endswith("_serving")
}))
"""


def serving_assets(home: Path, views_file: Path) -> tuple[dict[str, list[str]], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_ARCH_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, "LAMBDA_ARCH_HOME": str(home), "LAMBDA_ARCH_VIEWS_FILE": str(views_file)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_every_declared_view_has_a_serving_asset(tmp_path: Path) -> None:
    views_file = tmp_path / "views.toml"
    views_file.write_text(VIEWS_TOML)
    assets, _ = serving_assets(tmp_path, views_file)
    assert set(assets) == {
        "trending_serving",
        "discovery_serving",
        "device_mix_serving",
        "title_by_device_serving",
        "source_by_device_serving",
        "sessions_serving",
    }
    for name, parents in assets.items():
        view = name.removesuffix("_serving")
        assert parents == [f"{view}_batch", f"{view}_speed"], name


def test_a_bad_views_file_leaves_the_built_in_assets(tmp_path: Path) -> None:
    views_file = tmp_path / "views.toml"
    views_file.write_text('[views.by_colour]\ndimensions = ["colour"]\nform = "top"\n')
    assets, stderr = serving_assets(tmp_path, views_file)
    assert set(assets) == {
        "trending_serving",
        "discovery_serving",
        "device_mix_serving",
        "sessions_serving",
    }
    assert "LAMBDA_ARCH_VIEWS_FILE" in stderr and "'by_colour'" in stderr
