from engine.asr import ASR
from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.outputs import RequestOutput, Segment, Transcription
from scheduler import SamplingParams

__all__ = ["ASR", "AsyncEngine", "EngineConfig", "RequestOutput", "SamplingParams", "Segment", "Transcription"]
