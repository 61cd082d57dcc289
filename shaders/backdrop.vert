#version 330 core
// Pass 1: one instance per distinct background tile of the picture (one when every cell shows
// the same), a rectangle covering it in the backdrop texture. Per instance: where it goes, the
// two source tiles it crossfades (previews between two steps) and the weight of the second.
in vec2 in_pos;     // corner of the unit square
in vec2 in_cell;    // the tile's origin in the backdrop, texels
in vec4 in_org;     // origins of the two source tiles in the background atlas (x0, y0, x1, y1)
in float in_mix;    // weight of the second
uniform vec2 u_tile;    // tile size, texels
uniform vec2 u_target;  // size of the backdrop, texels
flat out vec2 v_cell;
flat out vec4 v_org;
flat out float v_mix;
void main() {
    v_cell = in_cell;
    v_org = in_org;
    v_mix = in_mix;
    gl_Position = vec4((in_cell + in_pos * u_tile) / u_target * 2.0 - 1.0, 0.0, 1.0);
}
