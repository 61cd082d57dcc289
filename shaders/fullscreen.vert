#version 330 core
// A single full-viewport triangle strip; the fragment shader works from gl_FragCoord.
in vec2 in_pos;
void main() { gl_Position = vec4(in_pos, 0.0, 1.0); }
