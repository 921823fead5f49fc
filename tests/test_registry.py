"""The stream registry is the one list of streams: the docs, the replay and the worker read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskstream.schemas.registry import STREAMS, UnknownStream, stream_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "streams.md"


def test_the_streams_page_lists_every_stream_its_columns_key_and_table():
    rows = {line.split("|")[1].strip().strip("`"): line for line in DOCS.read_text().splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(STREAMS)
    for name, spec in STREAMS.items():
        row = rows[name]
        missing = [c for c in (*spec.columns, *spec.key, spec.table) if f"`{c}`" not in row]
        assert not missing, f"docs/streams.md, {name}: {missing}"


def test_every_row_stream_has_a_validator_and_every_processor_exists(tmp_path):
    from pydantic import SecretStr

    from riskstream.settings import Settings
    from riskstream.streams.driver import Driver

    driver = Driver(Settings(data_dir=tmp_path, pan_key=SecretStr("k" * 32)), with_models=False)
    for name, spec in STREAMS.items():
        assert spec.columnar == (name == "transactions")
        assert spec.time_column in spec.columns
        if spec.processor != "labels":
            assert driver.processor_for(name) is driver.processors[spec.processor]


def test_an_unknown_stream_names_the_known_ones():
    with pytest.raises(UnknownStream, match="the streams are: transactions, labels"):
        stream_spec("trades")


@pytest.mark.parametrize("module", ["riskstream.schemas.registry", "riskstream.schemas.events", "riskstream.schemas.transactions",
                                    "riskstream.streams.driver", "riskstream.rules.conditions",
                                    "riskstream.rules.limits", "riskstream.detectors.portfolio_kernels",
                                    "riskstream.detectors.var_kernels", "riskstream.detectors.var_models",
                                    "riskstream.detectors.var_backtest"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_the_worker_runs_every_registered_stream():
    from riskstream.streams.worker import TransactionPath

    assert sorted(TransactionPath.ORDER) == sorted(STREAMS)
