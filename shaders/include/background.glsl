// Backgrounds: the generated video (one tile) or the per-step previews (one tile per step), RGBA8
// tiles of u_bg_tile = (w, h, depth) packed like the map tiles.
uniform sampler3D u_bg;
uniform vec3 u_bg_tile;
uniform int u_bg_cols;
uniform int u_bg_count;          // tiles present (0: black)
uniform bool u_bg_nearest_time;  // video: show whole frames, never a blend of two

vec3 bg_tile(int tile, vec2 uv, float t01) {
    vec2 org = vec2(float(tile % u_bg_cols), float(tile / u_bg_cols)) * u_bg_tile.xy;
    vec2 p = clamp(uv * u_bg_tile.xy, vec2(0.5), u_bg_tile.xy - 0.5) + org;
    float z = t01 * (u_bg_tile.z - 1.0);
    if (u_bg_nearest_time) z = floor(z + 0.5);
    return texture(u_bg, vec3(p / vec2(textureSize(u_bg, 0).xy), (z + 0.5) / u_bg_tile.z)).rgb;
}

// pos: which tile, continuous (previews crossfade between steps like the maps do)
vec3 background(float pos, vec2 uv, float t01) {
    if (u_bg_count == 0) return vec3(0.0);
    float x = clamp(pos, 0.0, float(u_bg_count - 1));
    int i0 = int(floor(x));
    int i1 = min(i0 + 1, u_bg_count - 1);
    vec3 a = bg_tile(i0, uv, t01);
    float f = x - float(i0);
    return f > 0.0 ? mix(a, bg_tile(i1, uv, t01), f) : a;
}
