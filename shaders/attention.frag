#version 330 core
// Pass 2, every pixel of every view: which cell of the grid (one cell for most views), one
// bilinear sample of the cell's map field (pass 1: field.frag; up to four crossfade tiles,
// already at the current time and normalized, one per channel), clamp and blend them, shape
// (gain, gamma, threshold), one LUT sample, one sample of the cell's background (pass 1:
// backdrop.frag; none for the heatmap) and the composite. Three texture reads per pixel at
// most whatever the view, no loops, no table reads, branches only on uniforms. Outside the
// picture (letterbox or pillarbox bars: the picture keeps the video's aspect) and in the grid's
// gaps there is no picture: transparent black.
// Uniforms: see shaders/README.md.
#include "colormap.glsl"
#include "composite.glsl"

uniform vec4 u_viewport;    // x, y, w, h of the picture in window pixels (GL origin bottom-left),
                            // inside the drawn viewport: what lies around it are the bars
uniform vec2 u_grid;        // columns, rows
uniform vec2 u_pitch;       // cell + gap, in pixels
uniform vec2 u_cell;        // cell size in pixels
uniform float u_ncells;
uniform sampler2D u_field;  // pass 1: a W'xH' tile per cell, tiles laid out like the grid
uniform vec2 u_field_tile;  // W', H'
uniform vec2 u_field_texel; // 1 / size of u_field in texels
uniform vec4 u_weights;     // crossfade weight of each channel (the same in every cell)
uniform sampler2D u_backdrop;     // pass 1: RGBA8 background tiles
uniform vec2 u_backdrop_tile;     // texels per tile
uniform vec2 u_backdrop_texel;    // 1 / size of u_backdrop in texels
uniform vec2 u_backdrop_step;     // tile of a cell = (column, row) * step: 0 where cells share one
uniform bool u_backdrop_on;       // false: black (no background, or the heatmap needs none)
uniform float u_gain;
uniform float u_gamma;
uniform float u_threshold;
uniform float u_opacity;
uniform int u_composite;
uniform bool u_premultiply;

out vec4 frag;

// a bilinear sample of the tile of cell cr at uv (0..1), kept to the tile's texel centers so
// that neighbouring tiles never bleed in
vec2 tile_coord(vec2 cr, vec2 uv, vec2 tile, vec2 texel) {
    return (cr * tile + clamp(uv * tile, vec2(0.5), tile - 0.5)) * texel;
}

void main() {
    vec2 px = vec2(gl_FragCoord.x - u_viewport.x, u_viewport.w - (gl_FragCoord.y - u_viewport.y));
    vec2 cr = floor(px / u_pitch);
    vec2 local = px - cr * u_pitch;
    vec2 uv = local / u_cell;
    bool inside = all(greaterThanEqual(px, vec2(0.0))) && all(lessThan(px, u_viewport.zw))
        && all(lessThan(local, u_cell)) && cr.x < u_grid.x && cr.y * u_grid.x + cr.x < u_ncells;

    vec4 v = textureLod(u_field, tile_coord(cr, uv, u_field_tile, u_field_texel), 0.0);
    float n = dot(clamp(v, 0.0, 1.0), u_weights);
    n = pow(clamp(n * u_gain, 0.0, 1.0), u_gamma);
    float m = n >= u_threshold ? 1.0 : 0.0;
    vec3 bg = vec3(0.0);
    if (u_backdrop_on) bg = textureLod(u_backdrop, tile_coord(cr * u_backdrop_step, uv, u_backdrop_tile, u_backdrop_texel), 0.0).rgb;
    vec4 c = composite(u_composite, colormap(n), n, m, bg, u_backdrop_on, u_opacity);
    c = inside ? c : vec4(0.0);
    frag = u_premultiply ? vec4(c.rgb * c.a, c.a) : c;
}
