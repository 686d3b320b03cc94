"""Shared fixtures. Everything is offline: tiny models built here, never the Hub."""
import os

import pytest

os.environ.setdefault("MEMLAB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tests.helpers import (AIC, FIXTURES, ROOT, SHARED_DATA, make_tiny_sscd,  # noqa: E402, F401 - for the fixtures
                           synthetic_images, trust)


def pytest_configure(config):
    """One torch thread for the test process's own thread; the in-process app's compute thread
    (``memlab.compute``) keeps the cores (the subprocesses, the apps and CLIs under test, keep their own). Each
    thread that calls torch keeps an OpenMP team; once the teams hold more threads than there are cores, libgomp
    stops spin-waiting between parallel regions, and every model call of either thread ran slower for the rest of
    the session (``benchmarks/bench_omp_teams.py`` measures the cases)."""
    import torch

    from memlab import compute

    cores = torch.get_num_threads()
    torch.set_num_threads(1)
    compute.run(torch.set_num_threads, cores)



@pytest.fixture(scope="session")
def sscd_cache(tmp_path_factory):
    """A memlab cache folder holding a tiny stand-in named like the official file."""
    cache = tmp_path_factory.mktemp("memlab-cache")
    trust(make_tiny_sscd(cache / "sscd" / "sscd_disc_mixup.torchscript.pt"))
    return cache


@pytest.fixture(scope="session")
def tiny_clip_name():
    import open_clip

    open_clip.add_model_config(FIXTURES / "memlab-tiny-clip.json")
    return "memlab-tiny-clip"


@pytest.fixture
def image_folder(tmp_path):
    """12 distinct images, one exact duplicate, one corrupt file, and a captions CSV."""
    d = tmp_path / "imgs"
    d.mkdir()
    rows = []
    for i, im in enumerate(synthetic_images(12)):
        im.save(d / f"img{i:02d}.png")
        rows.append((100 + i, f"img{i:02d}.png", f"a colour field number {i}"))
    synthetic_images(1)[0].save(d / "dup.png")
    rows.append((200, "dup.png", "a copy of the first field"))
    (d / "broken.png").write_bytes(b"not a png at all")
    rows.append((300, "broken.png", "a corrupt file"))
    csv = d / "captions.csv"
    csv.write_text("id,file,caption\n" + "\n".join(f"{a},{b},{c}" for a, b, c in rows) + "\n")
    return d


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny StableDiffusionPipeline built from configs and saved with save_pretrained, so tests load
    it through the same code path as a Hub model."""
    from memlab.pipelines import make_pipeline

    out = tmp_path_factory.mktemp("tiny-pipe") / "pipe"
    make_pipeline("tiny", seed=0).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_pipeline_dir):
    """A world folder: the tiny pipeline + a pixel index of 30 synthetic images (kept in the index)."""
    import shutil

    import pandas as pd

    from memlab.descriptors import create_descriptor
    from memlab.index import build_index
    from memlab.world import write_world_json

    w = tmp_path_factory.mktemp("tiny-world")
    shutil.copytree(tiny_pipeline_dir, w / "model")
    ims = synthetic_images(30, size=16)
    items = pd.DataFrame({"id": range(30), "caption": [f"a colour field {i}" for i in range(30)],
                          "file": [f"{i}.png" for i in range(30)]})
    def keep_images(folder):  # the index keeps its images, as a world's does (the app shows and serves them)
        (folder / "images").mkdir()
        for i, im in enumerate(ims):
            im.save(folder / "images" / f"{i}.png")

    build_index(w / "index", items, lambda i: ims[i], [create_descriptor("pixel")], calib_n=10, image_root="images",
                extra_files=keep_images)
    write_world_json(w, name="tiny", model="model", index="index",
                     defaults={"steps": 3, "guidance": 5.0, "seeds": "0-3"})
    return w


@pytest.fixture(scope="session")
def tiny_generator(tiny_pipeline_dir):
    from memlab.generate import Generator

    return Generator.from_pretrained(tiny_pipeline_dir, device="cpu")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tiny_world):
    """The app on the tiny world, launched the way app.py launches it: (base URL, Lab)."""
    from memlab.service import Lab
    from memlab.app import build_app, launch
    from memlab.world import World

    lab = Lab(World.load(tiny_world), device="cpu")
    demo = build_app(lab)
    port = free_port()
    launch(demo, lab, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", lab
    demo.close()


@pytest.fixture(scope="session")
def client(server):
    import gradio_client

    return gradio_client.Client(server[0], verbose=False)
