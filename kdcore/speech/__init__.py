"""Speech input for sequence models: the frame spec stored with every speech model
(``frames.json``) and ``classify_wavs`` / ``classify_frames`` to run a trained (or registered) model
on new recordings."""

from kdcore.speech.classify import classify_frames, classify_wavs, frame_logits, wav_frames
from kdcore.speech.frames import FrameSpec

__all__ = ["FrameSpec", "classify_frames", "classify_wavs", "frame_logits", "wav_frames"]
