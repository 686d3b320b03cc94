"""Untrusted files (issue 15): nothing a user supplies is unpickled, TorchScript is loaded only when
memlab fetched it from the official URL or the user confirmed its checksum, images are capped in bytes
and pixels before decoding, and the app serves files only from the world's image folders."""
import http.server
import re
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_pickle_loading_in_memlab():
    """Static check over the shipped code: no pickle, no torch.load without weights_only=True, no
    np.load with allow_pickle=True, TorchScript loaded in one place, after the trust check."""
    bad = []
    for f in list((ROOT / "memlab").rglob("*.py")) + list((ROOT / "index_builder").rglob("*.py")) + [ROOT / "app.py"]:
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append((f.name, m.group(0)))
        bad += [(f.name, x) for x in re.findall(r"^\s*import pickle|allow_pickle=True|pickle\.loads?\(", text, re.M)]
        if "jit.load(" in text and f.name != "descriptors.py":
            bad.append((f.name, "jit.load"))
    assert bad == []
    src = (ROOT / "memlab" / "descriptors.py").read_text()
    assert src.index("check_torchscript_trusted(self.weights") < src.index("torch.jit.load(")
    # a diffusers folder's .bin weights are a pickle that diffusers loads unrestricted ("Defaulting to unsafe
    # serialization"): every diffusers model memlab loads from a folder asks for safetensors
    calls = []
    for f in (ROOT / "memlab").rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"(StableDiffusionPipeline|AutoencoderKL|UNet2DConditionModel)\.from_pretrained\(", text):
            depth, i = 1, m.end()
            while depth:  # the call's arguments, to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((f.name, "use_safetensors=True" in text[m.end():i]))
    assert {"pipeload.py", "train_descriptor.py"} <= {f for f, _ in calls} and all(ok for _, ok in calls), calls
    assert "load_pipeline(" in (ROOT / "memlab" / "train.py").read_text()  # the trainer loads the generator's way


class _Marker:
    """A pickle that writes a file when it is loaded: what a hostile .bin does instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_a_pipeline_folder_is_loaded_from_safetensors_and_diffusers_or_transformers_alone(tiny_pipeline_dir, tmp_path):
    """A world's model folder may come from elsewhere (`--world`, `run --model`, `train --pipeline`): a UNet
    stored as a .bin (a pickle, here one that writes a file when loaded) is refused with a line that says why,
    and the pickle never runs; a component naming a library other than diffusers or transformers (diffusers
    imports whatever module it names) is refused naming the component, before anything is imported."""
    import json
    import pickle

    from memlab.errors import MemlabError
    from memlab.generate import Generator

    bin_pipe = tmp_path / "bin"
    shutil.copytree(tiny_pipeline_dir, bin_pipe)
    (bin_pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    ran = tmp_path / "the-pickle-ran"
    with open(bin_pipe / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Marker(ran)}, f)
    with pytest.raises(MemlabError, match="safetensors weights only and never unpickles"):
        Generator.from_pretrained(bin_pipe, device="cpu")
    assert not ran.exists()

    odd = tmp_path / "odd"
    shutil.copytree(tiny_pipeline_dir, odd)
    index = json.loads((odd / "model_index.json").read_text())
    index["feature_extractor"] = ["antigravity", "Fly"]  # importing it would open a web browser
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MemlabError, match=r"model_index.json: feature_extractor names the library 'antigravity'"):
        Generator.from_pretrained(odd, device="cpu")
    import sys

    assert "antigravity" not in sys.modules
    assert Generator.from_pretrained(tiny_pipeline_dir, device="cpu").pipe.unet is not None  # as saved: loads


def test_torchscript_needs_the_official_url_or_a_confirmed_checksum(tmp_path, monkeypatch):
    from tests.helpers import make_tiny_sscd
    from memlab.descriptors import create_descriptor
    from memlab.errors import MemlabError
    from memlab.index import sha256

    monkeypatch.delenv("MEMLAB_TRUST_SHA256", raising=False)
    monkeypatch.setenv("MEMLAB_CACHE", str(tmp_path / "cache"))
    p = make_tiny_sscd(tmp_path / "elsewhere" / "sscd_disc_mixup.torchscript.pt")
    digest = sha256(p)
    with pytest.raises(MemlabError) as e:  # copied in by hand: refused, with its checksum to confirm
        create_descriptor("sscd", weights=str(p), device="cpu")
    assert "refusing to load TorchScript" in str(e.value) and digest in str(e.value)
    with pytest.raises(MemlabError, match="not the checksum you confirmed"):
        create_descriptor("sscd", weights=str(p), weights_sha256="0" * 64, device="cpu")
    assert create_descriptor("sscd", weights=str(p), weights_sha256=digest, device="cpu").dim == 24

    # fetched by memlab from the (here: local) official URL: recorded, then loaded with no confirmation
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(p, served / "sscd_disc_mixup.torchscript.pt")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MEMLAB_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr("memlab.descriptors.SSCD_URL", f"http://127.0.0.1:{httpd.server_port}/{{model}}.torchscript.pt")
        d = create_descriptor("sscd", device="cpu")
        assert d.weights == tmp_path / "cache" / "sscd" / "sscd_disc_mixup.torchscript.pt"
    finally:
        httpd.shutdown()
    # the downloaded file, modified afterwards, is no longer trusted
    b = bytearray(d.weights.read_bytes())
    b[-30] ^= 0x01
    d.weights.write_bytes(bytes(b))
    with pytest.raises(MemlabError, match="refusing to load TorchScript"):
        create_descriptor("sscd", device="cpu")


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG of a few hundred bytes whose header declares width x height (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(min(height, 64))) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_images_over_the_caps_are_refused_before_decoding(tiny_world, tmp_path, capsys):
    from memlab.cli import main as memlab_main
    from memlab.errors import MemlabError
    from memlab.match import MAX_IMAGE_BYTES, load_image

    bomb = png_bomb(tmp_path / "bomb.png", 100_000, 100_000)  # 10 gigapixels declared
    assert bomb.stat().st_size < 100_000
    with pytest.raises(MemlabError, match="declares .* decompression bomb"):
        load_image(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (MAX_IMAGE_BYTES + 1))
    with pytest.raises(MemlabError, match="at most 20 MiB"):
        load_image(big)
    assert memlab_main(["match", "--index", str(tiny_world / "index"), "--images", str(bomb)]) == 2
    assert "decompression bomb" in capsys.readouterr().err


def test_the_app_refuses_bombs_and_serves_uploads_within_the_caps(client, tmp_path):
    from gradio_client import handle_file

    from tests.helpers import synthetic_images

    ok = tmp_path / "q.png"
    synthetic_images(1, size=16)[0].save(ok)
    md, gallery, table = client.predict(handle_file(str(ok)), 3, None, api_name="/match_image")
    assert "Top-1 score" in md and "threshold" in md and len(table["data"]) == 3
    with pytest.raises(Exception, match="decompression bomb"):
        client.predict(handle_file(str(png_bomb(tmp_path / "bomb.png", 60_000, 60_000))), 3, None,
                       api_name="/match_image")
    with pytest.raises(Exception, match="upload an image first"):
        client.predict(None, 3, None, api_name="/match_image")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (21 * 2**20))
    with pytest.raises(Exception, match="exceeds the maximum file size of 20971520 bytes") as e:
        client.predict(handle_file(str(big)), 3, None, api_name="/match_image")
    assert "Traceback" not in str(e.value)
    md, _, _ = client.predict(handle_file(str(ok)), 3, None, api_name="/match_image")  # still serving
    assert "Top-1 score" in md


def test_the_file_route_serves_only_the_worlds_images(server, tmp_path):
    import httpx

    base, lab = server
    inside = lab.world.path / "index" / "images" / "3.png"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    world = lab.world.path
    r = httpx.get(f"{base}gradio_api/file={inside}", timeout=10)
    assert r.status_code == 200 and r.content == Path(inside).read_bytes()
    refused = [f"{base}gradio_api/file={secret}",
               f"{base}gradio_api/file=/etc/passwd",
               f"{base}gradio_api/file={world}/../{secret.parent.name}/secret.txt",
               f"{base}gradio_api/file={world}/..%2F..%2F..%2Fetc%2Fpasswd",
               f"{base}gradio_api/file={world}/%2e%2e/%2e%2e/etc/passwd",
               f"{base}gradio_api/file=../../../../etc/passwd"]
    for url in refused:
        r = httpx.get(url, timeout=10)
        assert r.status_code in (403, 404) and b"root:" not in r.content and b"not for the web" not in r.content, url


def test_a_clip_checkpoint_that_is_more_than_tensors_is_one_clear_error(tmp_path):
    """An index's manifest names its CLIP descriptor's checkpoint; a file open_clip's weights_only load refuses (a
    pickle of more than tensors, here one that would write a file) is a ModelFileMissing that says why, not
    torch's traceback advising weights_only=False; the pickle never runs."""
    import pickle

    from memlab.descriptors import CLIPDescriptor
    from memlab.errors import ModelFileMissing

    ran = tmp_path / "the-pickle-ran"
    ckpt = tmp_path / "clip.pt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": _Marker(ran)}, f)
    with pytest.raises(ModelFileMissing, match="not a checkpoint of tensors alone"):
        CLIPDescriptor(model="ViT-B-32", pretrained=str(ckpt), device="cpu")
    assert not ran.exists()


def test_a_hub_pipeline_is_checked_before_diffusers_imports_what_it_names(tiny_pipeline_dir, tmp_path, monkeypatch):
    """A world.json from elsewhere may name any Hub id as its model: its model_index.json is read first (here from
    a Hub cache laid out as huggingface_hub lays it out, offline) and a component naming another library is
    refused before diffusers imports it; a Hub id neither cached nor reachable is one clear error."""
    import json
    import sys

    import huggingface_hub.constants

    from memlab.errors import MemlabError
    from memlab.generate import Generator

    snap = tmp_path / "hub" / "models--someone--pipe" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_pipeline_dir, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    index = json.loads((snap / "model_index.json").read_text())
    (snap / "model_index.json").write_text(json.dumps({**index, "feature_extractor": ["antigravity", "Fly"]}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MemlabError, match=r"feature_extractor names the library 'antigravity'"):
        Generator.from_pretrained("someone/pipe", device="cpu")
    assert "antigravity" not in sys.modules
    with pytest.raises(MemlabError, match="cannot load the pipeline someone/absent"):
        Generator.from_pretrained("someone/absent", device="cpu")
