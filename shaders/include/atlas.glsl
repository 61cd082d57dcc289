// Pass 1 input: map tiles, every volume of the current selection, [W', H', F'] each, packed side
// by side in one RG16F 3D texture (time in z). Texel (x, y, f) holds the tile's value at frames
// f and f + 1 (the last frame twice), so the value at any time is one read and a mix. Pass 1
// runs at map resolution, one fragment per map texel: every read is a texel center, unfiltered.
uniform sampler3D u_maps;
uniform int u_frame;   // latent frame before the current time
uniform float u_frac;  // weight of the frame after it

// one tile (origin org in the atlas) at texel (x, y), linear in time, mapped by its range at
// that time (lo, 1 / (hi - lo)): 0 at lo, 1 at hi, NOT clamped (pass 2 clamps after its bilinear
// sample, which keeps the result that of clamping each tile's trilinear sample). Kept inside
// half floats' range.
float tap_norm(vec2 org, ivec2 texel, float lo, float scale) {
    vec2 ab = texelFetch(u_maps, ivec3(ivec2(org) + texel, u_frame), 0).rg;
    return clamp((mix(ab.x, ab.y, u_frac) - lo) * scale, -60000.0, 60000.0);
}
