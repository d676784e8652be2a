"""Frame-mean CLIPScore with a tiny local CLIP built from config (no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from avdm.config import asset_path
from avdm.errors import MissingWeightsError
from avdm.metrics.clip_score import FrameCLIPScore


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.from_pretrained(asset_path("shapes_teacher"), subfolder="tokenizer")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": tokenizer.model_max_length,
        },
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _manual(folder, videos, prompts) -> float:
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    scores = []
    for video, prompt in zip(videos, prompts):
        for frame in video.unbind(1):  # (3, H, W)
            image = ((frame + 1) * 127.5).round().to(torch.uint8)
            inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model(**inputs)
            cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
            scores.append(100 * max(cos, 0.0))
    return sum(scores) / len(scores)


def test_frame_mean_clip_score_is_torchmetrics_score_of_every_frame(tiny_clip):
    torch.manual_seed(1)
    videos = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    prompts = ["a red circle moving left", "a blue square moving up"]
    metric = FrameCLIPScore(tiny_clip)
    metric.update(videos[:1], prompts[:1])
    metric.update(videos[1:], prompts[1:])
    assert float(metric.compute()) == pytest.approx(_manual(tiny_clip, videos, prompts), rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="2 videos need 2 prompts"):
        metric.update(videos, prompts[:1])


def test_missing_clip_weights_are_one_sentence(tmp_path):
    with pytest.raises(MissingWeightsError, match="--clip-path"):
        FrameCLIPScore(tmp_path / "no_clip")


def test_evaluate_and_compare_report_clip_score_when_given_a_clip(tiny_clip, tmp_path):
    from avdm.compare import markdown
    from avdm.data.shapes import VIDEO_DIR, write_shapes_dataset
    from avdm.evaluate import evaluate

    csv = write_shapes_dataset(tmp_path / "clips", 4, num_frames=4, size=32, seed=3)
    (csv.parent / VIDEO_DIR / "captions.csv").write_bytes(csv.read_bytes())
    folder = csv.parent / VIDEO_DIR
    with_clip = evaluate(folder, folder, num_frames=4, resolution=32, clip_path=str(tiny_clip))
    without = evaluate(folder, folder, num_frames=4, resolution=32)
    assert 0.0 <= with_clip["clip_score"] <= 100.0 and "clip_score" not in without
    assert "| CLIPScore |" in markdown([{"label": "a", **with_clip}])
    assert "CLIPScore" not in markdown([{"label": "a", **without}])
