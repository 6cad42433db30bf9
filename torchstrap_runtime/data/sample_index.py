"""SampleIndexDecoder: each sample's dataset index, read through an int field (no index stored)."""
from typing import Callable

from ffcv.fields.basics import IntDecoder


class SampleIndexDecoder(IntDecoder):
    """Outputs the dataset index (int64) of each sample instead of the field's value.

    Decode a stored int field (e.g. 'label') again under a new output name, so that .beton files
    written without an index field give indices too (CoKe's label memory needs them):

        pipelines["index"] = [SampleIndexDecoder(), ToTensor()]
        Loader(..., pipelines=pipelines, custom_field_mapper={"index": "label"})

    Upstream FFCV takes the same op: `pipelines["index"] = PipelineSpec("label", [SampleIndexDecoder(), ToTensor()])`.
    """

    def generate_code(self) -> Callable:
        def decoder(indices, destination, metadata, storage_state):
            for ix, sample_id in enumerate(indices):
                destination[ix] = sample_id
            return destination[:len(indices)]

        return decoder
