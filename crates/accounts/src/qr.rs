//! A QR code as an SVG image (one path of dark modules, a 4-module quiet zone), so TOTP
//! enrolment needs no raster image library.

use qrcodegen::{QrCode, QrCodeEcc};

use crate::{AccountsError, Result};

/// Pixels per module in the SVG's intrinsic size (it scales without loss).
const MODULE_PX: i32 = 6;
const QUIET_ZONE: i32 = 4;

/// `text` (an `otpauth://` URL) as a standalone SVG document.
pub fn svg(text: &str) -> Result<String> {
    let code = QrCode::encode_text(text, QrCodeEcc::Medium)
        .map_err(|e| AccountsError::Totp(format!("QR code: {e}")))?;
    let size = code.size();
    let side = size + 2 * QUIET_ZONE;
    let mut path = String::with_capacity((size * size * 6) as usize);
    for y in 0..size {
        for x in 0..size {
            if code.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE));
            }
        }
    }
    let px = side * MODULE_PX;
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{px}\" height=\"{px}\" viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\"><rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_svg_holds_the_code_of_the_text() {
        let text = "otpauth://totp/nonstop:ann?secret=JBSWY3DPEHPK3PXP&issuer=nonstop";
        let svg = svg(text).unwrap();
        let code = QrCode::encode_text(text, QrCodeEcc::Medium).unwrap();
        let dark = (0..code.size())
            .flat_map(|y| (0..code.size()).map(move |x| (x, y)))
            .filter(|&(x, y)| code.get_module(x, y))
            .count();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_eq!(
            svg.matches("h1v1h-1z").count(),
            dark,
            "one square per dark module"
        );
        // The top-left finder pattern's corner module, shifted by the quiet zone.
        assert!(svg.contains("M4,4h1v1h-1z"));
        assert!(svg.ends_with("</svg>"));
    }
}
