"""The Grafana dashboards, as code (Grafana's foundation SDK): serving, training, GPU/VRAM,
compression and the operator. `llmops-crdgen` writes them to dashboards/*.json and the chart;
nobody edits the JSON.

Every query reads only series in catalogue.py. Variables filter by namespace and by the
resource a series belongs to (the target labels the chart's PodMonitor sets, or the operator's
own `name` label). Where vLLM renamed a series, the query reads `new or old`.
"""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# Label matchers of each dashboard's variables.
SERVICE = 'namespace=~"$namespace", inferenceservice=~"$inferenceservice"'
TRAINING = 'namespace=~"$namespace", job_name=~"$finetunejob"'
GPU_POD = 'namespace=~"$namespace", pod=~"$pod"'
OBJECT = 'namespace=~"$namespace"'


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _targets(panel, queries: list[prometheus.Dataquery]):
    for i, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + i)))
    return panel


def graph(title: str, unit: str, *queries: prometheus.Dataquery, span: int = 12, height: int = 8, description: str = "",
          max_: float | None = None) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height)
    if max_ is not None:
        panel = panel.min(0).max(max_)
    return _targets(panel, list(queries))


def number(title: str, unit: str, *queries: prometheus.Dataquery, span: int = 6, height: int = 4, description: str = "") -> stat.Panel:
    return _targets(stat.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height),
                    [query.instant() for query in queries])


def bars(title: str, unit: str, *queries: prometheus.Dataquery, span: int = 12, height: int = 8, description: str = "") -> bargauge.Panel:
    return _targets(bargauge.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height),
                    [query.instant() for query in queries])


def grid(title: str, unit: str, *queries: prometheus.Dataquery, span: int = 24, height: int = 8, description: str = "") -> table.Panel:
    return _targets(table.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height),
                    [query.instant().format("table") for query in queries])


def variable(name: str, query: str, label: str) -> QueryVariable:
    return (QueryVariable(name).label(label).query(query).datasource(DATASOURCE).multi(True).include_all(True)
            .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))


def board(uid: str, title: str, description: str, variables: list[QueryVariable]) -> DashboardBuilder:
    builder = (DashboardBuilder(title).uid(uid).description(description).tags(["llmops"]).refresh("30s")
               .time("now-3h", "now").with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus")))
    for var in variables:
        builder = builder.with_variable(var)
    return builder


def quantiles(histogram: str, matchers: str, by: str, old_name: str | None = None) -> list[prometheus.Dataquery]:
    """p50/p95/p99 of a vLLM histogram; `old_name`: the name older vLLM releases used."""
    def rate(name: str) -> str:
        return f"rate({name}_bucket{{{matchers}}}[{RATE}])"

    buckets = rate(histogram) if old_name is None else f"({rate(histogram)} or {rate(old_name)})"
    return [q(f"histogram_quantile({p}, sum by ({by}, le) ({buckets}))", f"p{round(p * 100)} {{{{{by.split(', ')[-1]}}}}}")
            for p in (0.5, 0.95, 0.99)]


def error_ratio(matchers: str, status: str) -> str:
    """Responses of one status class over all; 0 (not "no data") while that class has none."""
    def rate(extra: str = "") -> str:
        return f"sum by (namespace, inferenceservice) (rate(http_requests_total{{{matchers}{extra}}}[{RATE}]))"

    of_status = rate(f', status="{status}"')
    return f"({of_status} or {rate()} * 0) / {rate()}"


def serving() -> DashboardBuilder:
    by = "namespace, inferenceservice, model_name"
    api = f'{SERVICE}, handler=~"/v1/.*"'
    return (board("llmops-serving", "llmops / Serving",
                  "InferenceServices: latency, throughput, queueing and KV cache, from vLLM's series (the CPU engine serves the same names).",
                  [variable("namespace", "label_values(vllm:num_requests_running, namespace)", "Namespace"),
                   variable("inferenceservice", 'label_values(vllm:num_requests_running{namespace=~"$namespace"}, inferenceservice)',
                            "InferenceService")])
            .with_row(Row("Latency"))
            .with_panel(graph("Time to first token", "s", *quantiles("vllm:time_to_first_token_seconds", SERVICE, by), span=8,
                              description="p50/p95/p99 per model; the alert's target is p95 under 0.5 s."))
            .with_panel(graph("Inter-token latency", "s", *quantiles("vllm:inter_token_latency_seconds", SERVICE, by,
                                                                      old_name="vllm:time_per_output_token_seconds"), span=8))
            .with_panel(graph("End-to-end request latency", "s", *quantiles("vllm:e2e_request_latency_seconds", SERVICE, by), span=8))
            .with_row(Row("Throughput"))
            .with_panel(graph("Requests/s", "reqps",
                              q(f"sum by ({by}) (rate(vllm:request_success_total{{{SERVICE}}}[{RATE}]))", "{{model_name}}"), span=8))
            .with_panel(graph("Tokens/s", "short",
                              q(f"sum by ({by}) (rate(vllm:prompt_tokens_total{{{SERVICE}}}[{RATE}]))", "prompt {{model_name}}"),
                              q(f"sum by ({by}) (rate(vllm:generation_tokens_total{{{SERVICE}}}[{RATE}]))", "generated {{model_name}}"),
                              span=8))
            .with_panel(graph("Generated tokens/s per GPU", "short",
                              q(f"sum by (namespace, inferenceservice, pod) (rate(vllm:generation_tokens_total{{{SERVICE}}}[{RATE}])) "
                                f'/ on (namespace, pod) group_left count by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{{namespace=~"$namespace"}})',
                                "{{pod}}"),
                              span=8, description="GPUs counted from the DCGM exporter's series of the same pod; the alert's floor is 500."))
            .with_row(Row("Load"))
            .with_panel(graph("Requests running and waiting", "short",
                              q(f"sum by ({by}) (vllm:num_requests_running{{{SERVICE}}})", "running {{model_name}}"),
                              q(f"sum by ({by}) (vllm:num_requests_waiting{{{SERVICE}}})", "waiting {{model_name}}"), span=8))
            .with_panel(graph("KV-cache usage", "percentunit",
                              q(f"max by ({by}, pod) (vllm:kv_cache_usage_perc{{{SERVICE}}} or vllm:gpu_cache_usage_perc{{{SERVICE}}})",
                                "{{pod}}"),
                              q(f"sum by ({by}) (rate(vllm:num_preemptions_total{{{SERVICE}}}[{RATE}]))", "preemptions/s {{model_name}}"),
                              span=8, max_=1, description="vLLM's paged KV cache (kv_cache_usage_perc, or gpu_cache_usage_perc before 0.10)."))
            .with_panel(graph("Error rate", "percentunit", *(q(error_ratio(api, status), f"{status} {{{{inferenceservice}}}}")
                                                              for status in ("5xx", "4xx")),
                              span=8, description="Responses of the OpenAI routes by status class; the alert's target is under 0.1 % 5xx.")))


def training() -> DashboardBuilder:
    eta = (f"(max by (job_name) (llmops_finetune_total_steps{{{TRAINING}}}) - max by (job_name) (llmops_finetune_step{{{TRAINING}}})) "
           f"/ max by (job_name) (deriv(llmops_finetune_step{{{TRAINING}}}[5m]))")
    return (board("llmops-training", "llmops / Training",
                  "FineTuneJobs: loss, throughput, progress and VRAM per GPU, from the training runner's endpoint.",
                  [variable("namespace", "label_values(llmops_finetune_step, namespace)", "Namespace"),
                   variable("finetunejob", 'label_values(llmops_finetune_step{namespace=~"$namespace"}, job_name)', "FineTuneJob")])
            .with_panel(number("Progress", "percentunit",
                               q(f"max by (job_name) (llmops_finetune_step{{{TRAINING}}}) / max by (job_name) (llmops_finetune_total_steps{{{TRAINING}}})",
                                 "{{job_name}}")))
            .with_panel(number("ETA", "s", q(eta, "{{job_name}}"), description="Steps left over the step rate of the last 5 minutes."))
            .with_panel(number("Tokens/s", "short", q(f"sum by (job_name) (llmops_finetune_tokens_per_second{{{TRAINING}}})", "{{job_name}}")))
            .with_panel(number("Finished runs' eval loss", "none",
                               q(f'llmops_status_figure{{{OBJECT}, kind="FineTuneJob", name=~"$finetunejob", figure="evalLoss"}}', "{{name}}"),
                               description="From the operator: kept after the training pods are gone."))
            .with_panel(graph("Loss", "none",
                              q(f"max by (job_name) (llmops_finetune_loss{{{TRAINING}}})", "train {{job_name}}"),
                              q(f"max by (job_name) (llmops_finetune_eval_loss{{{TRAINING}}})", "eval {{job_name}}")))
            .with_panel(graph("Throughput", "short",
                              q(f"sum by (job_name) (llmops_finetune_tokens_per_second{{{TRAINING}}})", "tokens/s {{job_name}}"),
                              q(f"sum by (job_name) (llmops_finetune_samples_per_second{{{TRAINING}}})", "samples/s {{job_name}}")))
            .with_panel(graph("Steps", "short",
                              q(f"max by (job_name) (llmops_finetune_step{{{TRAINING}}})", "done {{job_name}}"),
                              q(f"max by (job_name) (llmops_finetune_total_steps{{{TRAINING}}})", "planned {{job_name}}")))
            .with_panel(graph("VRAM per GPU against capacity", "bytes",
                              q(f"llmops_finetune_cuda_memory_allocated_bytes{{{TRAINING}}}", "allocated {{pod}} gpu{{gpu}}"),
                              q(f"llmops_finetune_cuda_memory_reserved_bytes{{{TRAINING}}}", "reserved {{pod}} gpu{{gpu}}"),
                              q(f"llmops_finetune_gpu_memory_total_bytes{{{TRAINING}}}", "capacity {{pod}} gpu{{gpu}}"),
                              description="torch's allocated and reserved memory, with NVML's total as the line not to cross."))
            .with_panel(graph("Process memory (RSS)", "bytes",
                              q(f"llmops_finetune_process_rss_bytes{{{TRAINING}}}", "{{pod}}"), span=24, height=6)))


def gpus() -> DashboardBuilder:
    used = f"DCGM_FI_DEV_FB_USED{{{GPU_POD}}}"
    capacity = f"(DCGM_FI_DEV_FB_USED{{{GPU_POD}}} + DCGM_FI_DEV_FB_FREE{{{GPU_POD}}})"
    runner_fraction = (f"llmops_finetune_gpu_memory_used_bytes{{{GPU_POD}}} / llmops_finetune_gpu_memory_total_bytes{{{GPU_POD}}}")
    return (board("llmops-gpu", "llmops / GPU memory",
                  "GPU memory used and free per GPU and per pod (DCGM exporter joined to our pods), utilisation and headroom "
                  "against the 80 % target; training pods' own NVML figures where no DCGM exporter runs.",
                  [variable("namespace", "label_values(DCGM_FI_DEV_FB_USED, namespace)", "Namespace"),
                   variable("pod", 'label_values(DCGM_FI_DEV_FB_USED{namespace=~"$namespace"}, pod)', "Pod")])
            .with_panel(graph("Memory used per GPU", "mbytes", q(used, "{{Hostname}} gpu{{gpu}} {{pod}}"),
                              q(capacity, "capacity {{Hostname}} gpu{{gpu}}"), description="DCGM reports MiB."))
            .with_panel(graph("Memory free per GPU", "mbytes", q(f"DCGM_FI_DEV_FB_FREE{{{GPU_POD}}}", "{{Hostname}} gpu{{gpu}} {{pod}}")))
            .with_panel(graph("Memory used per pod, by resource", "mbytes",
                              q(f"sum by (namespace, pod, finetunejob, compressionjob, inferenceservice) ({used} * on (namespace, pod) "
                                f"group_left (finetunejob, compressionjob, inferenceservice) max by (namespace, pod, finetunejob, compressionjob, "
                                f"inferenceservice) (up{{{GPU_POD}}}))",
                                "{{pod}} {{finetunejob}}{{compressionjob}}{{inferenceservice}}"),
                              description="DCGM's pod label joined with the scrape target of the same pod, which names our resource."))
            .with_panel(graph("Utilisation", "percent", q(f"DCGM_FI_DEV_GPU_UTIL{{{GPU_POD}}}", "{{Hostname}} gpu{{gpu}} {{pod}}"), max_=100))
            .with_panel(bars("Headroom against the 80 % target", "percentunit",
                             q(f"0.8 - {used} / {capacity}", "{{Hostname}} gpu{{gpu}} {{pod}}"),
                             description="Negative: above the target (the GPU memory alert fires after 10 minutes)."))
            .with_panel(graph("Training pods' memory fraction (NVML)", "percentunit", q(runner_fraction, "{{pod}} gpu{{gpu}}"), max_=1)))


def compression() -> DashboardBuilder:
    job = f'{OBJECT}, kind="CompressionJob", name=~"$compressionjob"'
    running = 'namespace=~"$namespace", job_name=~"$compressionjob"'
    return (board("llmops-compression", "llmops / Compression",
                  "CompressionJobs: each stage's size and quality before and after, and the quality gate's verdict "
                  "(from the operator, which keeps the runner's measurements in status).",
                  [variable("namespace", 'label_values(llmops_object_phase{kind="CompressionJob"}, namespace)', "Namespace"),
                   variable("compressionjob", 'label_values(llmops_object_phase{kind="CompressionJob", namespace=~"$namespace"}, name)',
                            "CompressionJob")])
            .with_panel(bars("Quality gate (1 passed, 0 failed)", "none", q(f'llmops_status_figure{{{job}, figure="qualityGatePassed"}}', "{{name}}"),
                             span=8))
            .with_panel(bars("Size ratio (output / input)", "percentunit", q(f'llmops_status_figure{{{job}, figure="sizeRatio", stage=""}}', "{{name}}"),
                             span=8))
            .with_panel(bars("Quality drop", "percentunit", q(f'llmops_status_figure{{{job}, figure="qualityDrop", stage=""}}', "{{name}}"),
                             span=8))
            .with_panel(grid("Size per stage (bytes on disk)", "bytes",
                             q(f'max by (name, stage, figure) (llmops_status_figure{{{job}, figure=~"sizeBytes(Before|After)", stage!=""}})')))
            .with_panel(grid("Quality per stage", "none", q(f'max by (name, stage, figure) (llmops_status_figure{{{job}, figure=~"quality(Before|After)", stage!=""}})')))
            .with_panel(graph("Running chains: stage and steps", "short",
                              q(f"llmops_compress_stage{{{running}}}", "stage {{job_name}}"),
                              q(f"llmops_compress_stages_total{{{running}}}", "stages {{job_name}}"),
                              q(f"llmops_compress_stage_step{{{running}}}", "steps in stage {{job_name}}"),
                              span=24, description="From the compression runner while its pod runs (stage counts from 0).")))


def operator() -> DashboardBuilder:
    return (board("llmops-operator", "llmops / Operator", "The operator: reconcile rate, latency and errors, objects per phase, queue depth.", [])
            .with_panel(graph("Reconciles/s", "ops", q(f"sum by (kind, result) (rate(llmops_reconcile_total[{RATE}]))", "{{kind}} {{result}}"), span=8))
            .with_panel(graph("Reconcile latency p95", "s",
                              q(f"histogram_quantile(0.95, sum by (kind, le) (rate(llmops_reconcile_duration_seconds_bucket[{RATE}])))", "{{kind}}"),
                              span=8))
            .with_panel(graph("Reconcile errors/s", "ops",
                              q(f'sum by (kind) (rate(llmops_reconcile_total{{result="error"}}[{RATE}]))', "{{kind}}"), span=8))
            .with_panel(bars("Objects per phase", "short", q("count by (kind, phase) (llmops_object_phase)", "{{kind}} {{phase}}"), span=8))
            .with_panel(graph("Work queue depth", "short", q("llmops_workqueue_depth", "waiting"), span=8))
            .with_panel(graph("GPUs requested by active objects", "short", q("sum by (kind) (llmops_gpus_requested)", "{{kind}}"), span=8))
            .with_panel(grid("Failed objects", "none", q("max by (namespace, kind, name, reason) (llmops_object_failed)")))
            .with_panel(graph("API writes/s", "ops", q(f"sum by (method, resource) (rate(llmops_api_writes_total[{RATE}]))", "{{method}} {{resource}}"),
                              span=24, height=6)))


BOARDS = {"llmops-serving.json": serving, "llmops-training.json": training, "llmops-gpu.json": gpus,
          "llmops-compression.json": compression, "llmops-operator.json": operator}


def rendered() -> dict[str, str]:
    """file name → the dashboard's JSON, as Grafana imports it."""
    out = {}
    for name, build in BOARDS.items():
        model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        for number, panel in enumerate(model["panels"], start=1):
            panel["id"] = number  # Grafana wants unique panel ids; the builders leave them 0
        out[name] = json.dumps(model, sort_keys=True, indent=2) + "\n"
    return out
