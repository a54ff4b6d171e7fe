"""`python app.py [--host H] [--port P] [--model M] [--share]`: start the PACL explorer demo (also Spaces' entry)."""

import logging
import sys

from demo import build_demo, launch_options
from pacl_core.cli.args import Parser
from pacl_core.errors import PACLError


def main(argv=None) -> None:
    p = Parser(description="PACL explorer: open-vocabulary segmentation demo")
    p.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1; Spaces sets its own)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or $GRADIO_SERVER_PORT)")
    p.add_argument("--model", default=None,
                   help="initial model: 'toy', 'vit-b-16', a PACL head .safetensors, a Hub head "
                        "hf-hub:ORG/REPO[@REVISION][:FILE], or an open_clip NAME:TAG (default: ViT-B/16 when its "
                        "weights can be had, else the toy model); PACL_HEADS=org/repo,org/other adds Hub heads")
    p.add_argument("--share", action="store_true", help="also serve a temporary public gradio.live link")
    args = p.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        p.exit(2, f"error: --port must be from 1 to 65535, got {args.port}\n")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(model=args.model)
    except PACLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())


if __name__ == "__main__":
    main()
