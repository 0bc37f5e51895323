"""The README.md model card of an export: front matter, the eval table, usage, the spec and how to reproduce it."""

from __future__ import annotations

from typing import Any


def _table(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0].get("metrics", {})) if rows else []
    head = "| sampler | NFE | " + " | ".join(names) + " | samples/s |"
    rule = "|---|---:|" + "---:|" * len(names) + "---:|"
    body = [f"| {r['label']} | {r['nfe']} | " + " | ".join(f"{r['metrics'][n]:.4f}" for n in names)
            + f" | {r['samples_per_s']:,.0f} |" for r in rows]
    return "\n".join([head, rule, *body])


def model_card(config: dict[str, Any], rows: list[dict[str, Any]] | None, fmt: str, command: str | None) -> str:
    """Markdown with YAML front matter (library_name, tags) for a Hugging Face model repository."""
    from fmmkit.spec.toml_writer import dumps

    spec = config["spec"]
    images = len(config["data"]["shape"]) == 3
    tags = ["fmmkit", "flow-map", spec["loss"]["kind"], config["model"]["kind"], config["data"]["kind"]]
    if fmt == "diffusers":
        tags.append("diffusers")
    front = ["---", f"library_name: {'diffusers' if fmt == 'diffusers' else 'fmmkit'}", "tags:", *(f"- {t}" for t in tags)]
    if images:
        front.append("pipeline_tag: unconditional-image-generation")
    front.append("---")
    name = config["name"]
    lines = [*front, "", f"# {name}", "",
             f"A flow map X_{{s,t}} trained by fmmkit ({spec['loss']['kind']}, {config['model']['kind']} "
             f"backbone, {config['data']['kind']} data of shape {tuple(config['data']['shape'])}): 1 to 8 network "
             "evaluations per sample.", "",
             f"Time convention: {config['time_convention']}.", "", "## Evaluation", ""]
    lines += [_table(rows), ""] if rows else ["Not evaluated yet: `fmmkit eval DIR` writes eval.json.", ""]
    lines += ["## Use", ""]
    if fmt == "diffusers":
        lines += ["```python", "import torch", "from fmmkit.export.diffusers_pipeline import FmmkitFlowMapPipeline", "",
                  "pipe = FmmkitFlowMapPipeline.from_pretrained(\"DIR\")",
                  "out = pipe(batch_size=16, num_inference_steps=4, generator=torch.Generator().manual_seed(0))",
                  "```", "",
                  "diffusers' time runs from noise at sigma = 1 to data at sigma = 0; the model returns "
                  "u = -v_{1 - timestep/N, 1 - r_timestep/N}(x) for FlowMapEulerDiscreteScheduler.", ""]
    else:
        lines += ["```python", "import fmmkit", "", "run = fmmkit.load_run(\"DIR\")",
                  "x = run.sample(16, steps=4)   # four flow-map jumps from fresh noise", "```", "",
                  "```bash", "fmmkit sample DIR --steps 4 --num 64 --out samples.png", "fmmkit eval DIR", "```", ""]
        if "as_torch_module_teacher" in config:
            lines += ["As a `torch_module` teacher of another distillation (the velocity v_{t,t} = b_t):", "", "```toml",
                      "[teacher]", dumps(config["as_torch_module_teacher"]).strip().replace("THIS_FOLDER", "DIR"), "```", ""]
    lines += ["## Reproduce", "", "```bash", command or f"fmmkit train spec.toml --out runs/{name}", "```", "",
              "with this spec (every default filled in; a [teacher] run must be trained first):", "", "```toml",
              dumps(spec).strip(), "```", ""]
    return "\n".join(lines)
