//! Single PNG/JPEG images for a model's input shape.
//!
//! The size must already match: resizing would change what is certified (a
//! certificate is about the exact tensor the model sees), so a mismatch is an
//! error for the caller to resolve, not something to paper over. The size is
//! read from the header before any pixel is decoded, so an oversized upload
//! costs nothing.
use super::DataError;
use image::{DynamicImage, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// Decodes a PNG or JPEG into a C x H x W `f32` vector in [0, 1] for a model
/// expecting `shape`: converted to grey (C = 1) or RGB (C = 3), alpha dropped.
/// 16-bit PNGs keep their precision; 8-bit values v become exactly v / 255,
/// as in the datasets.
pub fn decode_image(bytes: &[u8], shape: [usize; 3]) -> Result<Vec<f32>, DataError> {
    decode_named(bytes, shape, "image")
}

/// Reads and decodes an image file; see [`decode_image`].
pub fn load_image(path: &Path, shape: [usize; 3]) -> Result<Vec<f32>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_named(&bytes, shape, &path.display().to_string())
}

pub(super) fn decode_named(
    bytes: &[u8],
    shape: [usize; 3],
    what: &str,
) -> Result<Vec<f32>, DataError> {
    let [c, h, w] = shape;
    if c != 1 && c != 3 {
        return Err(DataError::UnsupportedChannels {
            what: what.to_string(),
            channels: c,
        });
    }
    let undecodable = |reason: String| DataError::Undecodable {
        what: what.to_string(),
        reason,
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| undecodable(e.to_string()))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(undecodable("not a PNG or JPEG image".into()));
    }
    let (found_w, found_h) = probe
        .into_dimensions()
        .map_err(|e| undecodable(e.to_string()))?;
    if (found_w as usize, found_h as usize) != (w, h) {
        return Err(DataError::WrongImageSize {
            what: what.to_string(),
            found_w: found_w as usize,
            found_h: found_h as usize,
            expected_w: w,
            expected_h: h,
        });
    }
    let img: DynamicImage = reader()?.decode().map_err(|e| undecodable(e.to_string()))?;
    // 8-bit images go through u8 and a division by 255 of our own, exactly
    // as the datasets do (the image crate's f32 conversion of grey to RGB
    // differs in the last bit); deeper images keep 16 bits.
    let color = img.color();
    let eight_bit = color.bytes_per_pixel() / color.channel_count() == 1;
    let interleaved: Vec<f32> = match (c, eight_bit) {
        (1, true) => unit(img.to_luma8().as_raw(), 255.0),
        (1, false) => unit(img.to_luma16().as_raw(), 65535.0),
        (_, true) => unit(img.to_rgb8().as_raw(), 255.0),
        (_, false) => unit(img.to_rgb16().as_raw(), 65535.0),
    };
    if c == 1 {
        return Ok(interleaved);
    }
    // Interleaved RGB to three planes.
    let plane = h * w;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in interleaved.chunks_exact(3).enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
    Ok(out)
}

fn unit<T: Copy + Into<f32>>(values: &[T], max: f32) -> Vec<f32> {
    values.iter().map(|&v| v.into() / max).collect()
}
