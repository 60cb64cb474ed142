"""A local web page for a trained model: ``python scripts/demo.py [checkpoint=PATH] [demo.port=7860]``.

Upload a picture (or pick a synthetic example), type a sentence and see the mask over the picture (DenseCRF
optional), the word types of the sentence (eq. 1) and, per visual level, where the referent sends its RAR
edges (rows of ``A = B1 B2``, eq. 9, averaged over the predicted mask). The video tab segments a video file or
the frames of one and returns the overlay as a GIF (CMPC-V checkpoints use the clip around each frame).
The page binds to ``demo.host`` (127.0.0.1: this machine only). Needs Gradio: ``pip install -e ".[demo]"``.
What the page computes lives in :mod:`cmpc.demo`; this file only lays it out.
"""

import os
import shutil
import tempfile
from pathlib import Path

import hydra

from cmpc.cli import friendly_errors, quiet_third_party_logs
from cmpc.demo import clip_page, error_line, image_page, load_demo_model, synthetic_examples
from cmpc.engine.builders import newest_checkpoint
from cmpc.engine.distributed import resolve_device
from cmpc.errors import CmpcError, ConfigError
from cmpc.models.language import IMAGE_WORD_TYPES
from cmpc.viz import enlarged

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline


def payload_path(payload):
    """The server-side path of an uploaded file as Gradio passes it unprocessed (a FileData dict or a path)."""
    if payload is None or isinstance(payload, (str, os.PathLike)):
        return payload
    return payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)


class Session:
    """The loaded checkpoint (one for the whole page: a local, single-user tool) and why loading failed."""

    def __init__(self, device):
        self.device, self.model, self.error = device, None, None

    def load(self, path) -> str:
        try:
            if not str(path or "").strip():
                raise ConfigError("no checkpoint given: type the path of a .pt written by train.py")
            self.model, self.error = load_demo_model(Path(str(path).strip()), self.device), None
            return f"loaded {self.model.describe()}"
        except Exception as err:  # a foreign or damaged file: the page says so and keeps serving
            kept = f" (still using {self.model.path})" if self.model is not None else ""
            self.error = f"{error_line(err)}{kept}"
            return self.error


def build_app(session: Session, checkpoint: str, examples: int, max_frames: int, fps: float, work_dir: Path):
    import gradio as gr

    dm = session.model
    image_size = int(dm.config.dataset.get("generate", {}).get("image_size", 128)) if dm else 128
    with gr.Blocks(title="CMPC demo") as app:
        gr.Markdown("## CMPC: referring segmentation\nUpload a picture, type what to segment, press **Segment**.")
        with gr.Row():
            path = gr.Textbox(value=checkpoint, label="checkpoint", scale=4, elem_id="checkpoint")
            load = gr.Button("Load", scale=1)
        loaded = gr.Textbox(value=session.error or (f"loaded {dm.describe()}" if dm else ""), label="model",
                            interactive=False, elem_id="model-status")
        load.click(session.load, inputs=path, outputs=loaded)

        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", image_mode=None, label="picture", height=320, elem_id="picture")
                    sentence = gr.Textbox(label="sentence", placeholder="the red circle left of the blue square",
                                          elem_id="sentence")
                    crf = gr.Checkbox(label="refine with DenseCRF", value=False)
                    run = gr.Button("Segment", variant="primary", elem_id="segment")
                    if examples > 0:
                        pairs = synthetic_examples(work_dir / "examples", examples, image_size=image_size)
                        gr.Examples([list(p) for p in pairs], inputs=[image, sentence], label="synthetic examples")
                with gr.Column():
                    shown = gr.Image(label="mask", interactive=False, height=320, elem_id="overlay")
                    status = gr.Textbox(label="status", interactive=False, elem_id="status")
            with gr.Row():
                chart = gr.Image(label="word types (eq. 1; * = not in the vocabulary)", interactive=False,
                                 elem_id="word-types")
                table = gr.Dataframe(label="word-type probabilities", interactive=False, elem_id="word-table")
            attention = gr.Gallery(label="RAR: where the referent sends its edges (eq. 9, figure 9)", columns=3,
                                   elem_id="attention")

            def segment(payload, text, refine):
                masked, chart, rows, pictures, line = image_page(session.model, payload_path(payload), text, refine)
                types = session.model.word_types if session.model else IMAGE_WORD_TYPES
                table = {"headers": ["word", *types], "data": rows or [["", *[""] * len(types)]]}
                return enlarged(masked), chart, table, [(enlarged(p), c) for p, c in pictures], line

            # unprocessed inputs: an unreadable upload reaches cmpc.demo, which answers with one status line
            run.click(segment, inputs=[image, sentence, crf], outputs=[shown, chart, table, attention, status],
                      preprocess=False)
            sentence.submit(segment, inputs=[image, sentence, crf], outputs=[shown, chart, table, attention, status],
                            preprocess=False)

        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    clip = gr.File(file_count="multiple", label="a video file, or the frames of one", elem_id="clip")
                    clip_sentence = gr.Textbox(label="sentence", placeholder="the red ball moving left")
                    run_clip = gr.Button("Segment video", variant="primary")
                    if examples > 0 and dm is not None and dm.video:
                        pairs = synthetic_examples(work_dir / "examples", examples, video=True, image_size=image_size)
                        gr.Examples([[[p], s] for p, s in pairs], inputs=[clip, clip_sentence], label="synthetic clips")
                with gr.Column():
                    gif = gr.Image(type="filepath", label="overlay (GIF)", interactive=False, height=320,
                                   elem_id="clip-overlay")
                    clip_chart = gr.Image(label="word types (eq. 1; * = not in the vocabulary)", interactive=False)
                    clip_status = gr.Textbox(label="status", interactive=False, elem_id="clip-status")

            def segment_video(payloads, text):
                paths = [payload_path(p) for p in (payloads or [])]
                return clip_page(session.model, paths, text, work_dir, fps=fps, max_frames=max_frames)

            run_clip.click(segment_video, inputs=[clip, clip_sentence], outputs=[gif, clip_chart, clip_status],
                           preprocess=False)
    return app


@hydra.main(version_base="1.3", config_path="../configs", config_name="demo")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio as gr
    except ImportError as err:
        raise ConfigError(f'the demo needs Gradio ({err}): pip install -c constraints.txt -e ".[demo]"') from err
    session = Session(resolve_device(cfg.device))
    try:
        path = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.paths.runs)
    except CmpcError as err:  # the page starts anyway and says what to do
        path, session.error = None, f"error: {err}"
    if path is not None:
        session.load(path)
    if session.error:
        print(session.error)
    work_dir = Path(tempfile.mkdtemp(prefix="cmpc_demo_"))  # examples and GIFs; removed when the demo stops
    try:
        app = build_app(session, str(path or ""), int(cfg.demo.examples), int(cfg.demo.max_frames),
                        float(cfg.demo.fps), work_dir)
        theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
        try:
            app.launch(server_name=str(cfg.demo.host), server_port=cfg.demo.port, share=False, ssr_mode=False,
                       allowed_paths=[str(work_dir)], theme=theme, quiet=True, show_error=True,
                       prevent_thread_lock=True)
        except OSError as err:  # the port is taken, or the host is not an address of this machine
            raise ConfigError(f"cannot serve on {cfg.demo.host}:{cfg.demo.port or '7860-7959'} ({err}); "
                              f"pick another demo.port or demo.host") from err
        print(f"CMPC demo on {app.local_url} (Ctrl+C to stop)", flush=True)
        app.block_thread()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

if __name__ == "__main__":
    main()
