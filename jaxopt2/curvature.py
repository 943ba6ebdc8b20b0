"""Matrix-free curvature operators (placeholder)."""
