// Map tiles: every volume of the current selection, [W', H', F'] each, packed side by side in
// one R16F 3D texture (u_tile_cols tiles per row). The hardware does the trilinear
// interpolation; clamping to the tile's texel centers keeps neighbours from bleeding in.
uniform sampler3D u_maps;
uniform vec3 u_latent;      // W', H', F'
uniform int u_tile_cols;
uniform sampler2D u_ranges; // RG32F, texel (frame, tile) = (lo, hi)

float map_sample(int tile, vec2 uv, float z) {
    vec2 org = vec2(float(tile % u_tile_cols), float(tile / u_tile_cols)) * u_latent.xy;
    vec2 p = clamp(uv * u_latent.xy, vec2(0.5), u_latent.xy - 0.5) + org;
    float zc = clamp(z + 0.5, 0.5, u_latent.z - 0.5);
    return texture(u_maps, vec3(p / vec2(textureSize(u_maps, 0).xy), zc / u_latent.z)).r;
}

vec2 range_at(int tile, float z) {
    int last = int(u_latent.z) - 1;
    int f0 = clamp(int(floor(z)), 0, last);
    int f1 = min(f0 + 1, last);
    float t = clamp(z - float(f0), 0.0, 1.0);
    return mix(texelFetch(u_ranges, ivec2(f0, tile), 0).rg, texelFetch(u_ranges, ivec2(f1, tile), 0).rg, t);
}

// normalized value of one tile: 0 at lo, 1 at hi
float map_norm(int tile, vec2 uv, float z) {
    vec2 r = range_at(tile, z);
    return clamp((map_sample(tile, uv, z) - r.x) / max(r.y - r.x, 1e-20), 0.0, 1.0);
}
