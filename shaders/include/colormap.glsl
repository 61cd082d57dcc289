// 256-entry RGB LUT, linearly interpolated between entries (no mipmaps: level 0 explicitly).
uniform sampler2D u_lut;
vec3 colormap(float n) { return textureLod(u_lut, vec2((clamp(n, 0.0, 1.0) * 255.0 + 0.5) / 256.0, 0.5), 0.0).rgb; }
