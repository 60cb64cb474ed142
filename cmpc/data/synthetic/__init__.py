"""Procedurally generated referring segmentation benchmark ("synthetic"), for images and videos.

Scenes hold 2-6 flat shapes (circle, square, triangle, star, diamond, cross) in six colours and two
clearly different sizes on a textured, noisy background. Every scene is built around one *kind* of
referring expression, so that results can be split by kind:

- ``entity``: the shape alone identifies the target ("the triangle");
- ``attribute``: shape plus colour and/or size is needed ("the small red ball");
- ``relation``: the target has an identical twin and only its relation to a landmark tells them apart
  ("the circle left of the blue square"; left/right/above/below/next to/between); most directional scenes
  hold a decoy twin further in that direction, so "the leftmost circle" is not the answer;
- ``location``: look-alikes that only absolute position tells apart ("the leftmost box", "the top right ball");
- ``action`` (videos only): identical twins that differ only in motion ("the red ball moving left");
- ``negative`` (optional): an expression about an object that is not in the scene (empty target).

A small grammar turns a structured :class:`Expression` into text (:func:`realize`) and back
(:func:`parse_expression`); :func:`resolve` returns the objects of a :class:`Scene` that an expression refers
to (``None`` when it is ill-posed, e.g. two candidates are too close to call one "leftmost"). Every
written expression resolves to exactly its target; ambiguous ones are resampled, never written.

Output formats are the real ones: the refer-API layout (``instances.json``, ``refs(unc).p``) for images
(:func:`generate_image_benchmark`) and the Refer-YouTube-VOS layout (palette PNG annotations,
``meta_expressions.json``) for videos (:func:`generate_video_benchmark`), plus side files ``kinds.json``
and ``scenes.json`` (objects with attributes and positions). Output is byte-for-byte deterministic given the
parameters (and library versions); the randomness of one sample derives from (seed, split, index) only.
Generation goes to a temporary sibling folder that is renamed into place after a ``COMPLETE.json`` stamp
is written; :func:`ensure_image_benchmark`/:func:`ensure_video_benchmark` regenerate only when the stamp is
missing or its parameters differ. See ``docs/synthetic.md``.

One concern per file (this ``__init__`` only re-exports):

- :mod:`.vocabulary` -- grammar tables (words, phrase spellings, kinds);
- :mod:`.scene` -- scene objects, expressions, geometry constants;
- :mod:`.resolver` -- what an expression refers to (:func:`resolve`, :func:`kind_is_valid`);
- :mod:`.sentences` -- text: :func:`realize`, :func:`parse_expression`;
- :mod:`.shapes` -- shape outlines, polygons, rasterisation;
- :mod:`.builders` -- scene construction per kind of expression;
- :mod:`.render` -- background, objects and noise;
- :mod:`.samples` -- one image or clip in memory;
- :mod:`.output` -- parameters, stamps, atomic output folders, encoders;
- :mod:`.refer_writer` -- the image benchmark in the refer layout;
- :mod:`.ytvos_writer` -- the video benchmark in the Refer-YouTube-VOS layout;
- :mod:`.stats` -- reading a benchmark back, statistics.

This package must not import torch or other ``cmpc.data`` modules.
"""
from __future__ import annotations

from cmpc.errors import ConfigError, DatasetError

from .output import GENERATOR_VERSION, IMAGE_DEFAULTS, MARKER, STAMP, VIDEO_DEFAULTS
from .refer_writer import ensure_image_benchmark, generate_image_benchmark
from .resolver import kind_is_valid, motion_label, relation_status, relation_subkind, resolve, shortcut_chance
from .samples import ImageSample, VideoSample, generate_image_sample, generate_video_sample
from .scene import (
                    BETWEEN_D_FALSE,
                    BETWEEN_D_TRUE,
                    DECOY_SHARE,
                    GAP,
                    LOC_MARGIN,
                    MOVE_MIN,
                    NEAR_FALSE,
                    NEAR_TRUE,
                    OFF_AXIS,
                    PAD,
                    RELATION_GAP,
                    STILL_MAX,
                    Expression,
                    Phrase,
                    Scene,
                    SceneObject,
                    scene_from_json,
)
from .sentences import clean_sentence, parse_expression, realize
from .shapes import object_polygon, polygon_mask
from .stats import benchmark_statistics, format_statistics, load_image_scenes, load_video_scenes
from .vocabulary import (
                    COLOUR_WORDS,
                    COLOURS,
                    CONNECTORS,
                    IMAGE_KINDS,
                    KINDS,
                    LOC_POST,
                    LOC_PRE,
                    LOCATIONS,
                    MOTION_POST,
                    MOTION_PRE,
                    MOTIONS,
                    PREFIXES,
                    REL_PHRASES,
                    RELATIONS,
                    SHAPE_WORDS,
                    SHAPES,
                    SIZE_RADIUS,
                    SIZE_WORDS,
                    SIZES,
                    SUFFIXES_IMAGE,
                    SUFFIXES_VIDEO,
)
from .ytvos_writer import FRAME_STEP, ensure_video_benchmark, generate_video_benchmark

__all__ = [
    "GENERATOR_VERSION", "SHAPES", "COLOURS", "SIZES", "KINDS", "MOTIONS", "RELATIONS", "LOCATIONS",
    "Phrase", "Expression", "SceneObject", "Scene", "ImageSample", "VideoSample",
    "clean_sentence", "realize", "parse_expression", "resolve", "kind_is_valid", "relation_subkind",
    "shortcut_chance",
    "generate_image_sample", "generate_video_sample",
    "generate_image_benchmark", "generate_video_benchmark", "ensure_image_benchmark", "ensure_video_benchmark",
    "scene_from_json", "load_image_scenes", "load_video_scenes", "benchmark_statistics", "format_statistics",
    # also public (as in the single-module generator): grammar tables, geometry constants, output parameters
    "SHAPE_WORDS", "COLOUR_WORDS", "SIZE_WORDS", "SIZE_RADIUS", "IMAGE_KINDS", "PREFIXES", "SUFFIXES_IMAGE",
    "SUFFIXES_VIDEO", "CONNECTORS", "REL_PHRASES", "LOC_PRE", "LOC_POST", "MOTION_POST", "MOTION_PRE",
    "PAD", "GAP", "LOC_MARGIN", "NEAR_TRUE", "NEAR_FALSE", "BETWEEN_D_TRUE", "BETWEEN_D_FALSE", "OFF_AXIS",
    "DECOY_SHARE", "RELATION_GAP", "MOVE_MIN", "STILL_MAX", "motion_label", "relation_status", "object_polygon",
    "polygon_mask", "IMAGE_DEFAULTS", "VIDEO_DEFAULTS", "MARKER", "STAMP", "FRAME_STEP", "ConfigError", "DatasetError",
]
