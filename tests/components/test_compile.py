"""Every component and the search pipeline compile with kfp 2.17; the YAML carries the cluster settings."""

import json

import pytest
import yaml
from kfp import compiler
from repo_paths import CELL_EXAMPLE, DIGITS

from kubetune.cluster_settings import ClusterSettings
from kubetune.components import FUNCTIONS, build
from kubetune.pipelines import EMBEDDED, InCluster, build_pipeline, compile_pipeline
from kubetune.spec import load_experiment, parse_experiment

IMAGE = "registry.example/kubetune/runtime:test"


def _documents(path):
    return list(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_component_compiles_without_installing_kfp(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    compiler.Compiler().compile(build(name, image=IMAGE), str(path))
    (spec,) = _documents(path)
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == IMAGE
    assert "pip install" not in " ".join(executor["container"]["command"])


@pytest.fixture
def gpu_experiment():
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["trial"].update(
        resources={"cpu": "4", "memory": "16Gi", "gpu": 2, "gpuType": "nvidia.com/gpu"},
        nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    return parse_experiment(data)


@pytest.fixture
def compiled(tmp_path, gpu_experiment):
    path = compile_pipeline(
        gpu_experiment,
        tmp_path / "pipeline.yaml",
        ClusterSettings(
            image=IMAGE, trainer_image="registry.example/kubetune/trainer:cuda", image_pull_secrets=("regcred",)
        ),
    )
    pipeline, platform = _documents(path)
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _executor(pipeline, component):
    return pipeline["deploymentSpec"]["executors"][f"exec-{component}"]["container"]


def test_trial_pod_requests_the_gpus_and_resources_of_the_spec(compiled):
    pipeline, _ = compiled
    train = _executor(pipeline, "train-trial")
    assert train["image"] == "registry.example/kubetune/trainer:cuda"
    accelerator = train["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "2"
    assert train["resources"]["cpuLimit"] == 4.0
    assert train["resources"]["memoryLimit"] == pytest.approx(16 * 1.073741824)
    assert _executor(pipeline, "suggest-trial")["image"] == IMAGE


def test_trial_pod_placement_shm_timeout_and_pull_secret(compiled):
    _, executors = compiled
    train = executors["exec-train-trial"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert train["emptyDirMounts"][0]["medium"] == "Memory"
    assert int(train["activeDeadlineSeconds"]) > 0
    assert [s["secretName"] for s in train["imagePullSecret"]] == ["regcred"]


def test_every_step_gets_credentials_from_the_secret_and_the_access_label(compiled):
    pipeline, executors = compiled
    assert set(executors) == set(pipeline["deploymentSpec"]["executors"])
    for name, executor in executors.items():
        envs = {item["envVar"] for secret in executor["secretAsEnv"] for item in secret["keyToEnv"]}
        assert {"KUBETUNE_STORAGE", "AWS_SECRET_ACCESS_KEY"} <= envs, name
        assert executor["podMetadata"]["labels"]["kubetune.io/access"] == "true", name


def _tasks(pipeline) -> dict[str, dict]:
    """Every task of the pipeline, the root's and those of nested DAGs (exit handler, loop), by name."""
    dags = [pipeline["root"], *pipeline["components"].values()]
    return {name: task for dag in dags for name, task in dag.get("dag", {}).get("tasks", {}).items()}


def _cached(pipeline) -> set[str]:
    return {name for name, task in _tasks(pipeline).items() if task.get("cachingOptions", {}).get("enableCache")}


def test_only_data_retrieval_is_cached_and_lanes_run_in_parallel(compiled, gpu_experiment):
    pipeline, _ = compiled
    loop = next(task for task in _tasks(pipeline).values() if "iteratorPolicy" in task)
    assert loop["iteratorPolicy"]["parallelismLimit"] == gpu_experiment.spec.budget.parallel_trials
    assert _cached(pipeline) == {"retrieve-data"}


@pytest.mark.parametrize(
    "data, cached",
    [
        ({"source": "s3://bucket/data.npz"}, False),
        ({"source": "https://example.org/data.npz", "sha256": "a" * 64}, True),
        ({"source": "file:///data/digits.npz"}, False),
    ],
)
def test_data_retrieval_is_cached_only_when_its_source_cannot_change(tmp_path, data, cached):
    spec = yaml.safe_load(DIGITS.read_text())
    spec["spec"]["data"].update(data)
    pipeline, _ = _documents(
        compile_pipeline(parse_experiment(spec), tmp_path / "p.yaml", ClusterSettings(image=IMAGE))
    )
    assert ("retrieve-data" in _cached(pipeline)) is cached


def test_a_failed_lane_still_runs_the_segments_exit_step(compiled):
    """next-segment follows the exit handler's sub-DAG whatever its outcome; KFP 2.17 attaches exit hooks
    only to non-iterator tasks (argocompiler/dag.go@2.17.0), so none may follow a ParallelFor directly."""
    pipeline, _ = compiled
    tasks = _tasks(pipeline)
    root = pipeline["root"]["dag"]["tasks"]
    assert root["next-segment"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    (group,) = root["next-segment"]["dependentTasks"]
    handler = pipeline["components"][root[group]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"retrieve-data", "ensure-study", "register-best"} <= set(handler)
    assert any("parameterIterator" in task for task in handler.values()), "the lanes run inside the exit handler"
    exit_tasks = [
        t for t in tasks.values() if t.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
    ]
    assert exit_tasks == [root["next-segment"]]
    for task in exit_tasks:
        assert not any("parameterIterator" in tasks[d] for d in task["dependentTasks"])


def test_a_lane_trains_only_when_suggest_found_no_stop_rule(compiled):
    """suggest-trial returns -1 once a stop rule holds (targetValue reached mid-segment, say): the lane's
    train and evaluate steps then do not run, and register-best still waits for the whole loop."""
    pipeline, _ = compiled
    tasks = _tasks(pipeline)
    (gate,) = [task for task in tasks.values() if "triggerPolicy" in task and "condition" in task["triggerPolicy"]]
    assert gate["dependentTasks"] == ["suggest-trial"]
    assert (
        gate["triggerPolicy"]["condition"]
        == "int(inputs.parameter_values['pipelinechannel--suggest-trial-Output']) >= 0"
    )
    gated = pipeline["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert set(gated) == {"train-trial", "evaluate-trial"}
    loop = next(name for name, task in tasks.items() if "parameterIterator" in task)
    assert tasks["register-best"]["dependentTasks"] == [loop]


def test_every_step_but_the_trial_has_cpu_and_memory_requests_and_limits(compiled):
    pipeline, _ = compiled
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources.get(key), (name, key)
    assert _executor(pipeline, "register-best")["resources"]["resourceMemoryLimit"] == ClusterSettings().step_memory


def test_step_resources_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STEP_MEMORY", "3Gi")
    monkeypatch.setenv("KUBETUNE_STEP_CPU", "100m")
    experiment = load_experiment(DIGITS)
    pipeline, _ = _documents(compile_pipeline(experiment, tmp_path / "p.yaml", ClusterSettings(image=IMAGE)))
    resources = _executor(pipeline, "next-segment")["resources"]
    assert resources["resourceMemoryLimit"] == "3Gi" and resources["resourceCpuRequest"] == "100m"


def test_next_segment_gets_the_kfp_token_label_and_its_own_namespace(compiled):
    _, executors = compiled
    finish = executors["exec-next-segment"]
    assert finish["podMetadata"]["labels"]["access-ml-pipeline"] == "true"
    assert finish["fieldPathAsEnv"] == [{"name": "KUBETUNE_NAMESPACE", "fieldPath": "metadata.namespace"}]
    others = [e for name, e in executors.items() if name != "exec-next-segment"]
    assert not any("access-ml-pipeline" in e["podMetadata"]["labels"] for e in others), "only it talks to KFP"


def test_trial_weights_do_not_pass_through_the_pipelines_artifact_store(compiled):
    pipeline, _ = compiled
    train = pipeline["components"]["comp-train-trial"]["outputDefinitions"]
    assert set(train.get("artifacts", {})) == {"predictions"}, "the weights go to MLflow, stored once"


def test_every_step_gets_the_s3_region(compiled):
    _, executors = compiled
    for name, executor in executors.items():
        envs = {item["envVar"] for source in executor["configMapAsEnv"] for item in source["keyToEnv"]}
        assert "AWS_DEFAULT_REGION" in envs, name


def test_a_toleration_in_both_the_spec_and_the_cluster_defaults_is_emitted_once(tmp_path, gpu_experiment):
    cluster = ClusterSettings(
        image=IMAGE, gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    )
    _, platform = _documents(compile_pipeline(gpu_experiment, tmp_path / "p.yaml", cluster))
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-trial"]
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_pipeline_parameters_have_defaults_and_descriptions(compiled, gpu_experiment):
    pipeline, _ = compiled
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert json.loads(parameters["experiment_spec"]["defaultValue"]) == gpu_experiment.to_dict()
    assert parameters["segment"]["defaultValue"] == 0
    assert all(p.get("description") for p in parameters.values())


def test_retry_for_infrastructure_failures_on_the_trainer(compiled):
    pipeline, _ = compiled
    loop = next(c for c in pipeline["components"].values() if "train-trial" in c.get("dag", {}).get("tasks", {}))
    assert loop["dag"]["tasks"]["train-trial"]["retryPolicy"]["maxRetryCount"] == 2


def test_cpu_only_experiment_trains_on_the_runtime_image(tmp_path):
    experiment = load_experiment(DIGITS)
    path = compile_pipeline(experiment, tmp_path / "p.yaml", ClusterSettings(image=IMAGE))
    pipeline, _ = _documents(path)
    train = _executor(pipeline, "train-trial")
    assert train["image"] == IMAGE
    assert "accelerator" not in train.get("resources", {})


def test_cluster_gpu_defaults_join_the_spec_placement_and_the_spec_wins(tmp_path, gpu_experiment):
    cluster = ClusterSettings(
        image=IMAGE,
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-a100", "pool": "gpu"},
        gpu_tolerations=({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},),
    )
    _, platform = _documents(compile_pipeline(gpu_experiment, tmp_path / "p.yaml", cluster))
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-trial"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu"}
    assert [t["key"] for t in train["tolerations"]] == ["dedicated", "nvidia.com/gpu"]


def test_cli_reads_cluster_settings_from_the_environment(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kubetune.cli import cli

    monkeypatch.setenv("KUBETUNE_IMAGE", "env/runtime:1")
    monkeypatch.setenv("KUBETUNE_GPU_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("KUBETUNE_IMAGE_PULL_SECRETS", "regcred other")
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["trial"]["resources"]["gpu"] = 1
    spec = tmp_path / "gpu.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(cli, ["compile", str(spec), "-o", str(tmp_path / "out.yaml")])
    assert result.exit_code == 0, result.output
    pipeline, platform = _documents(tmp_path / "out.yaml")
    assert _executor(pipeline, "suggest-trial")["image"] == "env/runtime:1"
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-trial"]
    assert train["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert [s["secretName"] for s in train["imagePullSecret"]] == ["regcred", "other"]


def test_cli_rejects_a_malformed_json_setting(monkeypatch):
    from click.testing import CliRunner

    from kubetune.cli import cli

    monkeypatch.setenv("KUBETUNE_GPU_TOLERATIONS", "[not json")
    result = CliRunner().invoke(cli, ["compile", str(DIGITS), "-o", "/dev/null"])
    assert result.exit_code == 2 and "must be JSON" in result.output


def test_the_target_the_pipeline_is_built_for_names_how_the_next_segment_starts(tmp_path):
    """Embedded and cluster differ where the pipeline is built: the exit step's end, and Kubernetes settings."""
    experiment = load_experiment(DIGITS)
    built = {}
    for name, target in (("embedded", EMBEDDED), ("cluster", InCluster(ClusterSettings(image=IMAGE)))):
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(experiment, target), str(path))
        documents = _documents(path)
        finish = documents[0]["root"]["dag"]["tasks"]["next-segment"]["inputs"]["parameters"]
        built[name] = (finish["finish"]["runtimeValue"]["constant"], len(documents))
    assert built == {"embedded": ("local.finish_segment", 1), "cluster": ("cluster.finish_segment", 2)}


@pytest.fixture
def supernet_compiled(tmp_path, gpu_experiment):
    """The GPU experiment's cell example with strategy.oneShot, compiled for the cluster."""
    data = yaml.safe_load(CELL_EXAMPLE.read_text())
    data["spec"]["trial"]["resources"] = gpu_experiment.spec.trial.resources.model_dump(by_alias=True)
    data["spec"]["strategy"]["oneShot"] = {"topK": 3}
    settings = ClusterSettings(image=IMAGE, trainer_image="registry.example/kubetune/trainer:cuda")
    path = compile_pipeline(parse_experiment(data), tmp_path / "pipeline.yaml", settings)
    pipeline, platform = _documents(path)
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_the_supernet_step_runs_in_a_trial_pod_before_every_lane(supernet_compiled):
    pipeline, platform = supernet_compiled
    step = _executor(pipeline, "search-supernet")
    assert step["image"] == "registry.example/kubetune/trainer:cuda"
    assert step["resources"]["accelerator"]["resourceCount"] == "2"
    assert "activeDeadlineSeconds" in platform["exec-search-supernet"]  # the trial pod's timeout
    tasks = _tasks(pipeline)
    assert set(tasks["search-supernet"]["dependentTasks"]) == {"ensure-study", "retrieve-data"}
    loop = next(task for task in tasks.values() if "parameterIterator" in task)
    assert "search-supernet" in loop["dependentTasks"], "no lane asks for a trial before the supernet work is done"
    assert "search-supernet" not in _cached(pipeline)


def test_only_one_shot_and_darts_add_the_supernet_step(compiled):
    pipeline, _ = compiled
    assert "search-supernet" not in _tasks(pipeline)
    assert "exec-search-supernet" not in pipeline["deploymentSpec"]["executors"]


def test_compile_writes_a_pipeline_per_sibling_study(tmp_path):
    from click.testing import CliRunner

    from kubetune.cli import cli

    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["strategy"].update(seeds=2, baseline="random")
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["compile", str(path), "-o", str(tmp_path / "out" / "main.yaml")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "digits-cnn-baseline-random-seed-2.pipeline.yaml",
        "digits-cnn-baseline-random.pipeline.yaml",
        "digits-cnn-seed-2.pipeline.yaml",
        "main.yaml",
    ]
    baseline, _ = _documents(tmp_path / "out" / "digits-cnn-baseline-random.pipeline.yaml")
    default = json.loads(baseline["root"]["inputDefinitions"]["parameters"]["experiment_spec"]["defaultValue"])
    assert default["metadata"]["name"] == "digits-cnn-baseline-random"
    assert default["spec"]["strategy"]["sampler"]["name"] == "random"


def test_with_trials_per_pod_one_trial_pod_per_slot_runs_every_step_of_its_trials(tmp_path, gpu_experiment):
    data = gpu_experiment.to_dict()
    data["spec"]["trial"]["trialsPerPod"] = 4
    settings = ClusterSettings(image=IMAGE, trainer_image="registry.example/kubetune/trainer:cuda")
    pipeline, platform = _documents(compile_pipeline(parse_experiment(data), tmp_path / "p.yaml", settings))
    tasks = _tasks(pipeline)
    assert {"suggest-trial", "train-trial", "evaluate-trial"}.isdisjoint(tasks)
    pod = _executor(pipeline, "run-trials")
    assert pod["image"] == "registry.example/kubetune/trainer:cuda"
    assert pod["resources"]["accelerator"]["resourceCount"] == "2"
    assert (
        "activeDeadlineSeconds" in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-run-trials"]
    )
    loop = next(name for name, task in tasks.items() if "parameterIterator" in task)
    assert tasks["register-best"]["dependentTasks"] == [loop]


def test_the_warm_start_step_is_a_cpu_step_that_runs_once_before_every_lane(tmp_path, gpu_experiment):
    data = gpu_experiment.to_dict()
    data["spec"]["strategy"]["warmStart"] = "meta"
    settings = ClusterSettings(image=IMAGE, trainer_image="registry.example/kubetune/trainer:cuda")
    pipeline, platform = _documents(compile_pipeline(parse_experiment(data), tmp_path / "pipeline.yaml", settings))
    step = _executor(pipeline, "warm-start")
    assert step["image"] == IMAGE and "accelerator" not in step["resources"]
    assert step["resources"]["resourceMemoryLimit"] == ClusterSettings().step_memory
    assert "activeDeadlineSeconds" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(
        "exec-warm-start", {}
    )
    tasks = _tasks(pipeline)
    assert set(tasks["warm-start"]["dependentTasks"]) == {"ensure-study", "retrieve-data"}
    loop = next(task for task in tasks.values() if "parameterIterator" in task)
    assert "warm-start" in loop["dependentTasks"], "no lane asks for a trial before the warm start is done"
    assert "warm-start" not in _cached(pipeline)
    assert "warm-start" not in _tasks(
        _documents(compile_pipeline(gpu_experiment, tmp_path / "plain.yaml", settings))[0]
    )
