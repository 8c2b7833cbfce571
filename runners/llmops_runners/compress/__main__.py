"""Entry point: `python -m llmops_runners.compress --config config.json` (or LLMOPS_CONFIG=config.json).

Exit codes, as the fine-tuning runner's: 0 success, 2 bad config or input and a failed quality
gate (retrying cannot help; the operator must not retry), 143 stopped by SIGTERM, 1 anything else.
Either way a JSON summary goes to the config's terminationMessagePath, with every finished
stage's figures.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..config import load_config, termination_path_from_raw
from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TERMINATED, BadInputError, RunnerFailure
from ..logs import setup_logging
from ..termination import build_message, write_termination_message
from .config import CompressConfig

log = logging.getLogger("llmops_runners.compress")


def _stop(signum: int, frame: object) -> None:
    raise RunnerFailure("Terminated", "The runner was stopped by SIGTERM before compression finished.", EXIT_TERMINATED)


def _report(path: str, status: str, reason: str, message: str, summary=None) -> None:
    extra = {"stages": summary.stages, "qualityGate": summary.gate} if summary else None
    write_termination_message(path, build_message(
        status, reason, message, metrics=summary.metrics if summary else None,
        output_path=str(summary.output) if summary else None, extra=extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops_runners.compress", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="runner config JSON (default: $LLMOPS_CONFIG)")
    args = parser.parse_args(argv)
    setup_logging()
    config_path = args.config or os.environ.get("LLMOPS_CONFIG")
    termination = termination_path_from_raw(config_path)
    try:
        config = load_config(config_path, CompressConfig)
        termination = config.termination_message_path
        signal.signal(signal.SIGTERM, _stop)
        from .gauges import CompressionGauges

        # The endpoint first: scrapers see the job (stage 0) while torch and the models load.
        gauges = CompressionGauges(config.job_name, len(config.stages))
        gauges.serve(config.metrics.port)
        from .pipeline import gate_message, run  # torch is imported once the config is known to be good

        summary = run(config, gauges)
    except BadInputError as error:
        print(error, file=sys.stderr)
        _report(termination, "Failed", "InvalidInput", str(error))
        return EXIT_BAD_INPUT
    except RunnerFailure as error:
        print(error, file=sys.stderr)
        _report(termination, "Failed", error.reason, str(error))
        return error.exit_code
    except Exception as error:  # noqa: BLE001 - every failure must reach the termination message
        log.exception("compression failed")
        detail = (str(error).strip().splitlines() or [""])[0][:300]
        _report(termination, "Failed", "CompressionFailed", f"Compression failed with {type(error).__name__}: {detail}".rstrip(": ") + ".")
        return EXIT_FAILED
    if not summary.passed:
        message = gate_message(summary.gate) + f"; the model is kept in {summary.output}, marked as not passing."
        print(message, file=sys.stderr)
        _report(termination, "Failed", "QualityGateFailed", message, summary)
        return EXIT_BAD_INPUT
    names = ", ".join(s["name"] for s in summary.stages)
    _report(termination, "Succeeded", "Completed", f"Compressed in {len(summary.stages)} stages ({names}); the model is in {summary.output}.", summary)
    log.info("done: %s", summary.metrics)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
