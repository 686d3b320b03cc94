"""memlab's web app: `python app.py [--world DIR ...]` (or MEMLAB_WORLD=DIR). Thin: the UI is memlab.app."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:  # ZeroGPU: `spaces` must be imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

import sys  # noqa: E402


def main(argv=None):
    from memlab.cli import Parser, device

    p = Parser(prog="python app.py", description="memlab web app")
    p.add_argument("--world", action="append", default=None,
                   help="world folder, repeatable: the first is the main page, each further one gets its own page "
                        "(default: $MEMLAB_WORLD or the built-in world)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to serve on (default $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for a class's network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default=None, type=device, help="torch device for the models: cpu, cuda, cuda:1 (default: a GPU "
                                                  "where there is one, else the CPU)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--queue-size", type=int, default=int(os.environ.get("MEMLAB_QUEUE_SIZE", 0)) or None,
                   help="requests that may wait in the queue (default 64; $MEMLAB_QUEUE_SIZE)")
    args = p.parse_args(argv)

    from memlab import gpu
    from memlab.errors import MemlabError
    from memlab.service import Lab
    from memlab.app import build_app, launch
    from memlab.world import World

    try:
        labs = [Lab(World.load(w), device=args.device) for w in (args.world or [None])]
        for lab in labs:
            lab.generator  # load the pipelines now, so the first click does not wait for them
            if gpu.ON_HOST:  # and the descriptors the host's GPU calls use (what a forked call loads is lost)
                for name in lab.descriptor_names:
                    lab.get_descriptor(name)
            lab.caption_vectors()  # an index's caption vectors are checked now: a bad one is one line, not a traceback
            lab.caption_words()  # its caption words too (or built now, for an index built before them)
            lab.card()  # the world's card too (the About tab and the run estimates read it)
            lab.probes()  # and its probes (the examples and the lesson)
    except MemlabError as e:
        sys.exit(f"error: {e}")
    launch(build_app(labs), labs, host=args.host, port=args.port, share=args.share, queue_size=args.queue_size)


if __name__ == "__main__":
    main()
