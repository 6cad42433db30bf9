// Native kernels of the seeded data ops, called from numba (see native.py), one C symbol each:
//
//   torchstrap_jpeg_crop_resize  decode only the rows and columns of a crop box of a JPEG
//                                (libjpeg-turbo's jpeg_skip_scanlines + jpeg_crop_scanline), then
//                                resize the box with OpenCV's INTER_AREA, as FFCV's resize does.
//   torchstrap_resize_area       the same resize from an already decoded (raw) image.
//   torchstrap_flip              copy an HxWx3 uint8 image, mirrored left-right, upside down, or as is.
//
// The crop decode gives the same pixels as a full decode (fast integer DCT, fancy upsampling, like FFCV's
// TurboJPEG call) followed by the crop: libjpeg-turbo upsamples the chroma of the first and last decoded
// columns without their outer neighbours, so one more column is decoded on each side of the box.
// Errors are return codes, never exit() or exceptions: 0 ok, -1 corrupt JPEG, -2 box outside the image,
// -3 scratch buffer too small.
#include <Python.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>

#include <jpeglib.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

namespace {

struct ErrorManager {
    jpeg_error_mgr base;
    jmp_buf jump;
};

void on_error(j_common_ptr cinfo) { longjmp(reinterpret_cast<ErrorManager *>(cinfo->err)->jump, 1); }
void on_message(j_common_ptr) {}  // corrupt-data warnings: libjpeg recovers, like TurboJPEG by default

struct Decoder {  // one per thread, created on first use and reused (jpeg_abort keeps the allocations)
    jpeg_decompress_struct cinfo;
    ErrorManager error;
    bool ready;
};
thread_local Decoder decoder;

// Decode rows [top, top + height) and at least columns [left, left + width) into `scratch`, rows of
// `*decoded_width` RGB pixels starting at image column `*decoded_left`. Only plain C objects live in this
// frame, so the longjmp of an error is safe.
int decode_rows_columns(const uint8_t *jpeg, uint64_t jpeg_size, uint32_t top, uint32_t left, uint32_t height,
                        uint32_t width, uint8_t *scratch, uint64_t scratch_size, uint32_t *decoded_left,
                        uint32_t *decoded_width) {
    Decoder &d = decoder;
    j_decompress_ptr cinfo = &d.cinfo;
    if (!d.ready) {
        cinfo->err = jpeg_std_error(&d.error.base);
        d.error.base.error_exit = on_error;
        d.error.base.output_message = on_message;
        jpeg_create_decompress(cinfo);
        d.ready = true;
    }
    if (setjmp(d.error.jump)) {
        jpeg_abort_decompress(cinfo);
        return -1;
    }
    jpeg_mem_src(cinfo, jpeg, static_cast<unsigned long>(jpeg_size));
    jpeg_read_header(cinfo, TRUE);
    cinfo->out_color_space = JCS_EXT_RGB;
    cinfo->dct_method = JDCT_IFAST;
    jpeg_start_decompress(cinfo);
    const uint32_t image_height = cinfo->output_height, image_width = cinfo->output_width;
    if (height == 0 || width == 0 || top + height > image_height || left + width > image_width) {
        jpeg_abort_decompress(cinfo);
        return -2;
    }
    JDIMENSION x = left > 0 ? left - 1 : 0;
    JDIMENSION w = (left + width < image_width ? left + width + 1 : image_width) - x;
    if (x != 0 || w != image_width) jpeg_crop_scanline(cinfo, &x, &w);  // x moves left to an iMCU edge
    if (uint64_t(w) * height * 3 > scratch_size) {
        jpeg_abort_decompress(cinfo);
        return -3;
    }
    if (top > 0) jpeg_skip_scanlines(cinfo, top);
    for (uint32_t row = 0; row < height;) {
        JSAMPROW line = scratch + uint64_t(row) * w * 3;
        JDIMENSION rows = jpeg_read_scanlines(cinfo, &line, 1);
        if (rows == 0) {  // cannot happen with a memory source; never loop forever
            jpeg_abort_decompress(cinfo);
            return -1;
        }
        row += rows;
    }
    jpeg_abort_decompress(cinfo);  // the rows below the box are never decoded
    *decoded_left = x;
    *decoded_width = w;
    return 0;
}

void resize_box(const cv::Mat &image, uint32_t top, uint32_t left, uint32_t height, uint32_t width,
                uint8_t *out, uint32_t out_height, uint32_t out_width) {
    cv::Mat destination(int(out_height), int(out_width), CV_8UC3, out);
    cv::resize(image(cv::Rect(int(left), int(top), int(width), int(height))), destination, destination.size(), 0,
               0, cv::INTER_AREA);
}

}  // namespace

extern "C" {

int torchstrap_jpeg_crop_resize(const uint8_t *jpeg, uint64_t jpeg_size, uint32_t top, uint32_t left,
                                uint32_t height, uint32_t width, uint8_t *scratch, uint64_t scratch_size,
                                uint8_t *out, uint32_t out_height, uint32_t out_width) {
    uint32_t decoded_left = 0, decoded_width = 0;
    int status = decode_rows_columns(jpeg, jpeg_size, top, left, height, width, scratch, scratch_size,
                                     &decoded_left, &decoded_width);
    if (status != 0) return status;
    cv::Mat decoded(int(height), int(decoded_width), CV_8UC3, scratch);
    resize_box(decoded, 0, left - decoded_left, height, width, out, out_height, out_width);
    return 0;
}

int torchstrap_resize_area(const uint8_t *image, uint32_t image_height, uint32_t image_width, uint32_t top,
                           uint32_t left, uint32_t height, uint32_t width, uint8_t *out, uint32_t out_height,
                           uint32_t out_width) {
    if (height == 0 || width == 0 || top + height > image_height || left + width > image_width) return -2;
    cv::Mat source(int(image_height), int(image_width), CV_8UC3, const_cast<uint8_t *>(image));
    resize_box(source, top, left, height, width, out, out_height, out_width);
    return 0;
}

// flip: 0 copy as is, 1 left-right, 2 upside down. Steps are bytes between rows (pixels are 3 bytes).
void torchstrap_flip(const uint8_t *image, int64_t image_step, uint8_t *out, int64_t out_step, uint32_t height,
                     uint32_t width, int32_t flip) {
    cv::Mat source(int(height), int(width), CV_8UC3, const_cast<uint8_t *>(image), size_t(image_step));
    cv::Mat destination(int(height), int(width), CV_8UC3, out, size_t(out_step));
    if (flip == 0)
        source.copyTo(destination);
    else
        cv::flip(source, destination, flip == 1 ? 1 : 0);
}

}  // extern "C"

// An importable (empty) module, so Python can locate the library: torchstrap_runtime.data._kernels.
static PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels", "torchstrap native kernels", -1, nullptr};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
