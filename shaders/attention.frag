#version 330 core
// The whole picture of every view: cells of a grid (one cell for most views), each blending up
// to four map tiles (the crossfades of continuous step and block), normalized, shaped
// (gain, gamma, threshold), colored by a LUT and composited over a background. Uniforms: see
// shaders/README.md.
#include "atlas.glsl"
#include "background.glsl"
#include "colormap.glsl"
#include "composite.glsl"

uniform vec4 u_viewport;   // x, y, w, h of the picture in window pixels (GL origin bottom-left)
uniform ivec2 u_grid;      // columns, rows
uniform float u_gap;       // pixels between cells
uniform int u_ncells;
uniform sampler2D u_cells; // grids: RGBA32F, texel (0, cell) = 4 tiles, (1, cell) = 4 weights, (2, cell).x = bg position
// one-cell views take their taps from uniforms instead: the sweep changes them every frame,
// and a uniform costs nothing where a texture write may stall the pipeline
uniform vec4 u_one_tiles;
uniform vec4 u_one_weights;
uniform float u_one_bg;
uniform float u_time;      // position in the video, 0..1
uniform float u_gain;
uniform float u_gamma;
uniform float u_threshold;
uniform float u_opacity;
uniform int u_composite;
uniform bool u_premultiply;

out vec4 frag;

void main() {
    vec2 px = vec2(gl_FragCoord.x - u_viewport.x, u_viewport.w - (gl_FragCoord.y - u_viewport.y));
    vec2 pitch = (u_viewport.zw + u_gap) / vec2(u_grid);
    ivec2 cr = ivec2(floor(px / pitch));
    vec2 cell_size = pitch - u_gap;
    vec2 local = px - vec2(cr) * pitch;
    int cell = cr.y * u_grid.x + cr.x;
    if (cr.x >= u_grid.x || cell >= u_ncells || any(greaterThanEqual(local, cell_size))) {
        frag = vec4(0.0, 0.0, 0.0, 1.0);
        return;
    }
    vec2 uv = local / cell_size;
    float z = u_time * (u_latent.z - 1.0);
    bool one = u_ncells == 1;
    vec4 tiles = one ? u_one_tiles : texelFetch(u_cells, ivec2(0, cell), 0);
    vec4 weights = one ? u_one_weights : texelFetch(u_cells, ivec2(1, cell), 0);
    float n = 0.0;
    for (int k = 0; k < 4; k++) {
        if (weights[k] > 0.0) n += weights[k] * map_norm(int(tiles[k] + 0.5), uv, z);
    }
    n = pow(clamp(n * u_gain, 0.0, 1.0), u_gamma);
    float m = n >= u_threshold ? 1.0 : 0.0;
    vec3 bg = background(one ? u_one_bg : texelFetch(u_cells, ivec2(2, cell), 0).x, uv, u_time);
    vec4 c = composite(u_composite, colormap(n), n, m, bg, u_opacity);
    frag = u_premultiply ? vec4(c.rgb * c.a, c.a) : c;
}
